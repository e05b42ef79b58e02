"""Specs for Gemma 3n's block (modeling/layers/altup.py, streams.AltUpBlock): with
the weights of transformers' Gemma3nTextDecoderLayer, our block maps the same AltUp
streams and per-layer input to the same streams, on a sliding-window layer with
activation sparsity and on a global one; and the parts it is built from."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.gemma3n import modeling_gemma3n as hf_gemma3n

from modeling.attention.dot_product import AttentionConfig
from modeling.blocks import BlockSpec
from modeling.context import Context
from modeling.hf import loader, tensors
from modeling.hf.families import gemma
from modeling.layers.altup import AltUpConfig
from modeling.layers.mlp import MlpConfig, gaussian_top_k
from modeling.layers.norms import NormConfig
from modeling.layers.rope import RopeConfig
from modeling.streams import AltUpBlock
from tests import hf_common

E, H, KV, D, F, N, R, P, S, WINDOW = 64, 4, 2, 16, 96, 4, 8, 8, 24, 8
THETAS = {"sliding_attention": 10_000.0, "full_attention": 1_000_000.0}


def _hf_config(**overrides):
  return transformers.Gemma3nTextConfig(
    **{
      **dict(
        vocab_size=128, hidden_size=E, intermediate_size=F, num_hidden_layers=2,
        num_attention_heads=H, num_key_value_heads=KV, head_dim=D, altup_num_inputs=N,
        laurel_rank=R, hidden_size_per_layer_input=P, vocab_size_per_layer_input=128,
        num_kv_shared_layers=0, sliding_window=WINDOW, activation_sparsity_pattern=[0.95, 0.0],
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={t: {"rope_type": "default", "rope_theta": v} for t, v in THETAS.items()},
      ),
      **overrides,
    },
    attn_implementation="eager",
  )  # fmt: skip


def _spec(layer_type: str, sparsity: float) -> BlockSpec:
  norm = NormConfig("rms", 1e-6)
  window = WINDOW if layer_type == "sliding_attention" else 0
  attention = AttentionConfig(
    E, H, KV, D, scale=1.0, window=window, rope=RopeConfig(theta=THETAS[layer_type], rotary_dim=D),
    qk_norm="head", v_norm=True, norm=norm,
  )  # fmt: skip
  mlp = MlpConfig(E, F, "gelu_tanh", activation_sparsity=sparsity)
  altup = AltUpConfig(E, norm, num_inputs=N, laurel_rank=R, per_layer_dim=P)
  return BlockSpec(attention, mlp, norm, stream=altup)


def _load_block(spec, hf_layer):
  """Our block with the HF layer's weights, through the loader's name table."""
  ours = AltUpBlock(spec, rngs=nnx.Rngs(0))
  norms = {k: (v, tensors.AS_IS) for k, v in tensors.SANDWICH_NORMS.items()}
  table = {**tensors.LAYER_WEIGHTS, **gemma.GEMMA3N_WEIGHTS, **norms}
  theirs = dict(hf_layer.state_dict())
  for path, variable in nnx.to_flat_state(nnx.state(ours, nnx.Param)):
    name, transform = table[".".join(map(str, path))]
    array = loader._TRANSFORMS[transform](theirs.pop(name).numpy())
    variable.set_value(jnp.asarray(array.reshape(variable.get_value().shape)))
  assert not theirs, f"HF tensors left unloaded: {sorted(theirs)}"
  return ours


@pytest.mark.parametrize("layer", [0, 1])
def test_block_matches_transformers_gemma3n_decoder_layer(layer):
  """Layer 0: window 8, 95% activation sparsity; layer 1: global. Packed rows:
  row 1 holds two documents, HF sees the same block-diagonal causal mask."""
  config = _hf_config()
  torch.manual_seed(layer)
  hf_layer = hf_gemma3n.Gemma3nTextDecoderLayer(config, layer).eval().float()
  hf_common.randomise(hf_layer)
  layer_type = config.layer_types[layer]
  ours = _load_block(_spec(layer_type, config.activation_sparsity_pattern[layer]), hf_layer)

  rng = np.random.default_rng(layer)
  streams = rng.standard_normal((N, 2, S, E)).astype(np.float32)
  per_layer = rng.standard_normal((2, S, P)).astype(np.float32)
  segment_ids = np.array([[1] * S, [1] * 10 + [2] * (S - 10)])
  positions = np.array([np.arange(S), np.r_[np.arange(10), np.arange(S - 10)]])
  q, k = np.arange(S)[:, None], np.arange(S)[None, :]
  visible = (k <= q) & (segment_ids[:, :, None] == segment_ids[:, None, :])
  if layer_type == "sliding_attention":
    visible &= q - k < WINDOW
  mask = np.where(visible, 0.0, np.finfo(np.float32).min)[:, None].astype(np.float32)
  mask = torch.as_tensor(mask)
  rotary = hf_gemma3n.Gemma3nRotaryEmbedding(config)
  position_ids = torch.as_tensor(positions)
  with torch.no_grad():
    cos_sin = rotary(torch.as_tensor(streams), position_ids, layer_type)
    want = hf_layer(
      torch.as_tensor(streams), cos_sin, torch.as_tensor(per_layer),
      shared_kv_states=hf_gemma3n.KVSharingDict(), attention_mask=mask, position_ids=position_ids,
    ).numpy()  # fmt: skip
  ctx = Context(jnp.asarray(positions), jnp.asarray(segment_ids))
  got, stats = ours(jnp.asarray(streams), ctx.at_layer(layer, {"per_layer_input": per_layer}))
  assert stats["attn"]["max_logits"].shape == (H,)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_gaussian_top_k_keeps_the_tail_above_the_normal_quantile():
  """For normal inputs, 95% sparsity zeroes about 95% of each row, and what is left
  is shifted by the same cutoff."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 20_000)), jnp.float32)
  y = np.asarray(gaussian_top_k(x, 0.95))
  np.testing.assert_allclose((y > 0).mean(axis=-1), 0.05, atol=0.005)
  kept = y > 0
  shift = np.asarray(x)[kept] - y[kept]
  np.testing.assert_allclose(shift, np.median(shift), atol=0.05)


def test_matformer_sub_model_equals_the_standalone_model_of_sliced_weights():
  """The tiny preset's layers at widths that break its scanned periods apart (the
  two reusing periods get different widths, the sparse layers too): the full model
  run as the sub-model equals a standalone model built at those widths from the
  leading slices of its weights."""
  from configs import gemma3n  # noqa: PLC0415
  from modeling import matformer  # noqa: PLC0415
  from modeling.config import decoder_config  # noqa: PLC0415
  from modeling.decoder import Decoder  # noqa: PLC0415

  cfg = decoder_config(gemma3n.get_config("tiny").model)
  assert cfg.num_periods == 2  # layers 4-7: two identical periods, scanned
  full = Decoder(cfg, rngs=nnx.Rngs(0))
  widths = (256, 512, 768, 768, 384, 384, 128, 768)
  sub = matformer.extract(full, widths)
  assert [b.mlp.mlp_dim for b in sub.cfg.blocks] == list(widths)
  assert sub.cfg.num_periods < cfg.num_periods  # regrouped: the widths differ per period
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 384, (2, 24)))
  nested, _ = nnx.jit(lambda m, t: m(t, layer_inputs=matformer.layer_inputs(widths)))(full, tokens)
  alone, _ = nnx.jit(lambda m, t: m(t))(sub, tokens)
  np.testing.assert_allclose(np.asarray(nested), np.asarray(alone), rtol=1e-5, atol=1e-5)
  whole, _ = nnx.jit(lambda m, t: m(t))(full, tokens)
  assert np.abs(np.asarray(whole) - np.asarray(nested)).max() > 1e-3  # the widths matter
  with pytest.raises(ValueError, match="width 1000 of layer 0 must be in"):
    matformer.extract(full, (1000,) + widths[1:])


def test_matformer_joint_training_lowers_both_losses(tmp_path):
  """objective.matformer_dims trains the half-width sub-model beside the full one: both
  losses fall and the sub-model's is logged."""
  import json  # noqa: PLC0415

  from tests.conftest import small_train_config  # noqa: PLC0415
  from trainer.trainer import Trainer  # noqa: PLC0415

  config = small_train_config("gemma3n", steps=30, log_every=10, eval_batches=1)
  config.objective.matformer_dims = (64,) * config.model.num_layers  # half of mlp_dim 128
  Trainer(config, str(tmp_path)).run()
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  full = [r["loss"] for r in records if "loss" in r]
  sub = [r["matformer_loss"] for r in records if "matformer_loss" in r]
  assert len(full) == len(sub) == 3
  assert full[-1] < full[0] - 0.5 and sub[-1] < sub[0] - 0.5, (full, sub)
  config.objective.matformer_dims = (256,) * config.model.num_layers
  with pytest.raises(ValueError, match="objective.matformer_dims: MatFormer width 256 of layer 0"):
    Trainer(config, str(tmp_path / "bad"))


def test_per_layer_embeddings_on_host_memory_train_like_on_device(tmp_path):
  """compute.ple_host_memory: the PLE table and its Adam moments live in
  pinned host memory across steps; the losses equal the on-device run's."""
  from tests.conftest import small_train_config  # noqa: PLC0415
  from trainer.trainer import Trainer  # noqa: PLC0415

  def run(on_host: bool, workdir):
    config = small_train_config("gemma3n", steps=4, log_every=1, eval_batches=1)
    config.compute.ple_host_memory = on_host
    config.optim.warmup_steps = 1
    trainer = Trainer(config, str(workdir))
    summary = trainer.run()
    return trainer, [r["loss"] for r in _records(workdir)], summary

  trainer, host_losses, _ = run(True, tmp_path / "host")
  table = trainer.state["params"]["stream"]["per_layer_embed"]
  assert table.sharding.memory_kind == "pinned_host"
  leaves = jax.tree.leaves(trainer.state["opt"])
  moments = [leaf for leaf in leaves if getattr(leaf, "shape", ()) == table.shape]
  assert moments and all(m.sharding.memory_kind == "pinned_host" for m in moments)
  assert trainer.state["params"]["embed"].sharding.memory_kind == "device"
  _, device_losses, _ = run(False, tmp_path / "device")
  np.testing.assert_allclose(host_losses, device_losses, rtol=1e-6)


def _records(workdir):
  import json  # noqa: PLC0415

  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if "loss" in r]
