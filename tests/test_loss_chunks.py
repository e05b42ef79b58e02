"""The loss over sequence chunks (`compute.loss_chunks`, modeling/losses.py): the
same cross-entropy, z-loss, MTP losses and gradients as the loss over the whole
logits, with the compiled step's temporaries no longer holding [b, s, vocab]."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from modeling import losses
from parallelism.mesh import check_loss_chunks
from tests.conftest import ROOT, fake_devices_env, small_train_config
from tests.test_microbatch import _batch, _close, _compiled_temps, _gradients, _programs
from trainer import checks


def _head(e, v, softcap=0.0):
  """A projection like the decoder's output head: matmul, then soft-cap."""
  w = jax.random.normal(jax.random.key(1), (e, v)) * e**-0.5

  def project(h, w):
    out = jnp.einsum("...e,ev->...v", h, w, preferred_element_type=jnp.float32)
    return softcap * jnp.tanh(out / softcap) if softcap else out

  return w, project


def _data(b, s, e, v, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  hidden = jax.random.normal(k1, (b, s, e))
  targets = jax.random.randint(k2, (b, s), 0, v)
  weights = (jax.random.uniform(k3, (b, s)) > 0.3).astype(jnp.float32)
  return hidden, targets, weights


@pytest.mark.parametrize("chunks", [2, 4, 16])
@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_head_losses_over_chunks_equal_the_whole_logits(chunks, softcap):
  """The main head with z-loss and two MTP depths (documents cut the shifts), values
  and gradients of head, hidden and the depths' outputs, against `cross_entropy`
  of whole logits."""
  hidden, targets, weights = _data(3, 32, 16, 50)
  segment_ids = jnp.ones((3, 32), jnp.int32).at[1, 10:].set(2)
  depths = [jnp.tanh(hidden), hidden * 0.5]
  w, project = _head(16, 50, softcap)

  def loss(w, hidden, depths, chunks):
    total, parts, mtp = losses.head_losses(
      project, w, hidden, targets, weights, mtp_hidden=depths, segment_ids=segment_ids,
      z_loss=1e-3, chunks=chunks,
    )  # fmt: skip
    return total + mtp.mean(), (parts, mtp)

  grad = lambda n: jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(w, hidden, depths, n)
  (want, (want_parts, want_mtp)), want_grads = grad(1)
  (got, (got_parts, got_mtp)), got_grads = grad(chunks)
  main, main_parts = losses.cross_entropy(project(hidden, w), targets, weights, 1e-3)
  mtp = [
    losses.cross_entropy(project(h, w), *losses.mtp_targets(k, targets, weights, segment_ids))
    for k, h in enumerate(depths, start=1)
  ]
  _close(want, main + jnp.mean(jnp.stack([m[1]["ce"] for m in mtp])), rtol=1e-6)
  _close(want_parts["z"], main_parts["z"], rtol=1e-6)
  _close(got, want, rtol=1e-6)
  _close(got_mtp, want_mtp, rtol=1e-6)
  for name in ("ce", "z"):
    _close(got_parts[name], want_parts[name], rtol=1e-6)
  jax.tree.map(lambda g, h: _close(g, h, rtol=1e-5), got_grads, want_grads)


def test_the_gradient_of_a_chunked_loss_never_holds_the_whole_logits():
  """Compiled temporaries of d(loss)/d(hidden, head) at b=2, s=1024, vocab 8192:
  the whole-logits loss holds [2, 1024, 8192] float32 (64 MiB), 8 chunks an eighth."""
  b, s, e, v = 2, 1024, 32, 8192
  hidden, targets, weights = _data(b, s, e, v)
  w, project = _head(e, v)
  logits_bytes = b * s * v * 4

  def temp(chunks):
    def loss(w, hidden):
      return losses.head_losses(project, w, hidden, targets, weights, chunks=chunks)[0]

    compiled = jax.jit(jax.grad(loss, (0, 1))).lower(w, hidden).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  whole, chunked = temp(1), temp(8)
  assert whole >= logits_bytes, (whole, logits_bytes)
  assert chunked < 0.35 * logits_bytes, (chunked, logits_bytes)


def test_a_step_over_loss_chunks_is_the_whole_step():
  """DeepSeek-V3 tiny with MTP, z-loss and the sequence balance loss, scanned
  layers; loss chunks alone and with 2 micro-batches, against the plain step."""
  config = small_train_config("deepseek_v3", batch_size=8, seq_len=32)
  config.objective.update(z_loss=1e-3, moe_seq_aux_weight=0.01, mtp_weight=0.3)
  config.model.num_layers = 3
  config.compute.scan_layers = "scan"
  whole, _ = _programs(config, 1)
  config.compute.loss_chunks = 4
  chunked, chunked_micro = _programs(config, 2)
  state, batch = whole.init_state(0), _batch(config)
  (total, (ce, _, terms)), grads = _gradients(whole, 1)(state, batch)
  assert chunked.objective.loss_chunks == 4 and "mtp_loss" in terms
  for program, n in ((chunked, 1), (chunked_micro, 2)):
    (total_c, (ce_c, _, terms_c)), grads_c = _gradients(program, n)(state, batch)
    _close(total_c, total)
    _close(ce_c, ce)
    _close(terms_c["mtp_loss"], terms["mtp_loss"])
    jax.tree.map(_close, grads_c, grads)


def test_loss_chunks_shrink_the_compiled_step():
  config = small_train_config("llama3", batch_size=4, seq_len=256)
  config.model.vocab_size = 8192
  one, eight = _compiled_temps(config, "compute", "loss_chunks", (1, 8))
  logits_bytes = 4 * 256 * 8192 * 4
  assert one - eight > logits_bytes, (one, eight, logits_bytes)


@pytest.mark.parametrize("chunks", [0, 3, 64])
def test_loss_chunks_that_do_not_split_the_sequence_are_one_error(chunks):
  sizes = {"data": 1, "fsdp": 1, "tensor": 1, "expert": 1, "context": 2}
  with pytest.raises(ValueError, match=r"compute\.loss_chunks=.*use one of \[1, 2, 4, 8, 16\]"):
    check_loss_chunks(32, chunks, sizes)
  config = small_train_config("llama3", seq_len=32)
  config.compute.loss_chunks = chunks
  with pytest.raises(ValueError, match=r"^compute\.loss_chunks"):
    checks.validate(config)


_COLLECTIVES = r"""
import re, jax
from configs import llama3
from parallelism import mesh as mesh_lib
from trainer import precision, step
config = llama3.get_config("tiny"); config.unlock()
config.mesh.update(fsdp=4); config.compute.loss_chunks = 4
config.train.update(batch_size=4, seq_len=64)
mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:4])
cfg = precision.model_config(config)
assert (cfg.embed_dim, cfg.vocab_size, cfg.tie_embeddings) == (256, 384, False)
text = step.build(config, mesh, cfg).lower().compile().as_text()
for op in ("all-gather", "all-reduce", "reduce-scatter"):
  print(op, " ".join(sorted(set(re.findall(r"= (\w+\[[\d,]+\])\{[^}]*\} " + op + r"\(", text)))))
"""


def test_on_fsdp_each_device_runs_its_own_tokens_against_the_gathered_head():
  """llama3 tiny (embed 256, vocab 384) on fsdp=4 with 4 loss chunks: the head is
  all-gathered, its gradient leaves by one reduce-scatter per chunk ([64, 384]
  each); no logits cross devices and no whole-head gradient is all-reduced (what
  XLA's partitioner does with the same chunked loss outside shard_map)."""
  proc = subprocess.run(
    [sys.executable, "-c", _COLLECTIVES], cwd=ROOT, env=fake_devices_env(4),
    capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  found = {
    op: set(rest.split())
    for op, _, rest in map(lambda s: s.partition(" "), proc.stdout.splitlines())
  }
  assert "f32[256,384]" in found["all-gather"]
  assert "f32[64,384]" in found["reduce-scatter"]
  assert not {"f32[256,384]", "f32[384,256]"} & found["all-reduce"]
  assert not [s for s in found["all-gather"] if s.endswith(",384]") and s.count(",") == 2]
