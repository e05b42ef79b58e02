"""One kernel dispatch (modeling/attention/kernels.py), `auto` by default: the XLA
reference on CPU; on GPU cuDNN where its features suffice and our Pallas kernels
where they do not; Pallas on TPU. Forcing what a layer cannot run is one
sentence. The choice per attention kind is the run's first log line."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeling.attention import kernels
from modeling.attention.dot_product import dot_product_attention, fused_attention
from modeling.config import Options, decoder_config
from tests.conftest import family_config, small_train_config
from trainer.trainer import Trainer


def _choices(family, **options) -> dict:
  """{attention kind: kernel} of `family`'s tiny preset under `options`."""
  cfg = decoder_config(family_config(family).model, Options(**options))
  return {kernels.label(b.attention): b.attention.kernel for b in cfg.blocks}


GPU = dict(platform="gpu", compute_dtype="bfloat16", attention_kernel="auto")


def test_auto_on_cpu_is_xla_for_every_kind():
  for family in ("llama3", "gpt_oss", "llama4", "deepseek_v32", "qwen3_next", "minimax01"):
    assert set(_choices(family, platform="cpu", attention_kernel="auto").values()) == {"xla"}


@pytest.mark.parametrize(
  "family,options,want",
  [
    ("llama3", {}, {"global attention": "cudnn"}),
    # sinks: cuDNN has none; our flash kernel has
    (
      "gpt_oss",
      {},
      {"sliding-window attention (sinks)": "pallas", "global attention (sinks)": "pallas"},
    ),
    # chunked layers: neither cuDNN nor our flash kernel mask by chunk
    ("llama4", {}, {"chunked attention": "xla", "global attention": "cudnn"}),
    ("deepseek_v3", {}, {"MLA": "pallas"}),  # per-head value dims: the flash kernel
    ("deepseek_v3", {"mla_absorbed": True}, {"MLA latent": "xla"}),  # measured faster
    ("deepseek_v32", {}, {"MLA + DSA top-k": "pallas"}),
    ("qwen3_next", {}, {"gated DeltaNet": "pallas", "global attention": "cudnn"}),
    ("minimax01", {}, {"lightning": "xla", "global attention": "cudnn"}),
    ("llama3", {"max_logits": True}, {"global attention": "pallas"}),  # QK-clip needs them
    ("llama3", {"compute_dtype": "float32"}, {"global attention": "pallas"}),
    ("llama3", {"platform": "tpu"}, {"global attention": "pallas"}),
  ],
)
def test_auto_on_gpu_picks_cudnn_where_it_can_and_pallas_where_it_cannot(family, options, want):
  assert _choices(family, **(GPU | options)) == want


@pytest.mark.parametrize(
  "family,options,needle",
  [
    ("gpt_oss", dict(GPU, attention_kernel="cudnn"), "cuDNN's fused attention has no sinks"),
    ("llama3", dict(attention_kernel="cudnn", platform="cpu"), "cuDNN needs a GPU"),
    ("llama3", dict(attention_kernel="pallas", platform="cpu"), "use pallas_interpret"),
    ("llama4", dict(GPU, attention_kernel="pallas"), "the flash kernel has no chunked mask"),
    ("minimax01", dict(GPU, attention_kernel="pallas"), "lightning attention has no Pallas"),
    ("llama3", dict(GPU, attention_kernel="cudnn", max_logits=True), "which QK-clip needs"),
    ("llama3", dict(attention_kernel="triton"), "is not valid; use one of auto, xla, cudnn"),
  ],
)
def test_forcing_an_impossible_kernel_is_one_sentence(family, options, needle):
  with pytest.raises(ValueError) as error:
    _choices(family, **options)
  assert needle in str(error.value) and "\n" not in str(error.value)
  assert str(error.value).startswith("compute.attention_kernel=")


def test_the_cudnn_call_computes_our_attention():
  """The call the cuDNN kernel gets (packed documents as a mask, the window as its
  left size, GQA by head groups), run on XLA here, equals our reference."""
  rng = np.random.default_rng(0)
  b, s, h, kh, d = 2, 24, 8, 2, 16
  q, k, v = (jnp.asarray(rng.standard_normal((b, s, n, d)), jnp.float32) for n in (h, kh, kh))
  segment_ids = jnp.asarray([[1] * s, [1] * 10 + [2] * 14])
  for window in (0, 5):
    want, _ = dot_product_attention(q, k, v, segment_ids=segment_ids, scale=0.3, window=window)
    got = fused_attention(
      q, k, v, segment_ids=segment_ids, scale=0.3, window=window, implementation="xla"
    )
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"window {window}")


def test_a_layer_on_cudnn_reports_no_max_logits(monkeypatch):
  """Its kernel computes none; the layer says nothing rather than a made-up value."""
  from flax import nnx  # noqa: PLC0415

  from modeling.attention.dot_product import Attention  # noqa: PLC0415
  from modeling.context import Context  # noqa: PLC0415

  cfg = decoder_config(family_config("llama3").model).blocks[0].attention
  layer = Attention(dataclasses.replace(cfg, kernel="cudnn"), rngs=nnx.Rngs(0))
  x = jnp.ones((1, 8, cfg.embed_dim))
  ctx = Context(jnp.arange(8)[None], jnp.ones((1, 8), jnp.int32))
  calls, real = [], jax.nn.dot_product_attention

  def xla_instead(*args, **kw):  # no GPU here: the same call on XLA
    calls.append(kw["implementation"])
    return real(*args, **(kw | {"implementation": "xla"}))

  monkeypatch.setattr(jax.nn, "dot_product_attention", xla_instead)
  _, stats = layer(x, ctx)
  assert calls == ["cudnn"] and "max_logits" not in stats


def test_the_run_states_its_kernels_first(tmp_path, capsys):
  config = small_train_config("qwen3_next", steps=2)  # gated DeltaNet x 3, then attention
  config.model.num_layers = 4
  config.optim.warmup_steps = 1
  Trainer(config, str(tmp_path))
  first = capsys.readouterr().out.splitlines()[0]
  assert first == "attention kernels: gated DeltaNet: xla; global attention: xla"
