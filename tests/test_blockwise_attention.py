"""Blockwise attention (modeling/attention/blockwise.py) against the XLA reference
in dot_product.py: outputs, per-head max logits and the gradients of q, k, v and
the sinks, over GQA/MHA/MQA, value dim != key dim, packed documents with padding,
windows, chunked masks, soft-cap and sinks, a length that is not whole blocks;
and its memory: no [seq, seq] scores in the compiled forward + backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeling.attention import blockwise
from modeling.attention import dot_product as dp

CASES = {
  "gqa": dict(),
  "mha": dict(kv_heads=4),
  "mqa_window_sinks_softcap": dict(kv_heads=1, window=40, sinks=True, softcap=3.0),
  "window": dict(window=20),
  "chunked": dict(chunk=24),
  "softcap": dict(softcap=2.0),
  "sinks": dict(sinks=True),
  "whole_blocks": dict(s=64),
}


def _inputs(b=2, s=100, h=4, kv_heads=2, d=16, dv=8, sinks=False, seed=0, **_):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  seg = np.ones((b, s), np.int32)
  seg[0, s // 3 :] = 2  # two documents
  seg[1, -7:] = 0  # padding
  pos = np.zeros((b, s), np.int32)
  for row in range(b):
    for doc in np.unique(seg[row]):
      pos[row, seg[row] == doc] = np.arange((seg[row] == doc).sum())
  q, k, v = normal(b, s, h, d), normal(b, s, kv_heads, d), normal(b, s, kv_heads, dv)
  return (q, k, v, normal(h) if sinks else None, normal(b, s, h, dv)), (seg, pos)


@pytest.mark.parametrize("name", CASES)
def test_blockwise_matches_the_reference_and_its_gradients(name):
  case = CASES[name]
  (q, k, v, sinks, probe), (seg, pos) = _inputs(**case)
  kw = dict(
    segment_ids=jnp.asarray(seg), positions=jnp.asarray(pos), scale=0.25,
    window=case.get("window", 0), chunk=case.get("chunk", 0), softcap=case.get("softcap", 0.0),
  )  # fmt: skip

  def run(fn):
    def loss(q, k, v, sinks):
      out, max_logits = fn(q, k, v, sinks=sinks, **kw)
      return (out * probe).sum(), (out, max_logits)

    argnums = (0, 1, 2, 3) if sinks is not None else (0, 1, 2)
    return jax.value_and_grad(loss, argnums, has_aux=True)(q, k, v, sinks)

  (_, (out, top)), grads = run(lambda *a, **k2: blockwise.attention(*a, block=32, **k2))
  (_, (ref, ref_top)), ref_grads = run(lambda *a, **k2: dp.dot_product_attention(*a, **k2))
  np.testing.assert_allclose(out, ref, atol=2e-6)
  np.testing.assert_allclose(top, ref_top, atol=1e-6)
  for got, want, arg in zip(grads, ref_grads, "qkvs"[: len(grads)], strict=True):
    np.testing.assert_allclose(got, want, atol=5e-6, err_msg=arg)


def test_long_sequences_run_blockwise_without_seq_by_seq_scores():
  """Past dot_product.BLOCKWISE positions the XLA path is blockwise: the compiled
  forward + backward holds less than one head's worth of [seq, seq] float32
  scores, and doubling the length does not quadruple it (it stays ~flat)."""
  h, d = 4, 32

  def temp(s):
    q = jax.ShapeDtypeStruct((1, s, h, d), jnp.float32)
    seg = jax.ShapeDtypeStruct((1, s), jnp.int32)

    def grads(q, seg):
      loss = lambda q: dp.dot_product_attention(q, q, q, segment_ids=seg, scale=0.1)[0].sum()
      return jax.grad(loss)(q)

    return jax.jit(grads).lower(q, seg).compile().memory_analysis().temp_size_in_bytes

  s = 2048  # 4 blocks of dp.BLOCKWISE
  short, long = temp(s), temp(2 * s)
  assert short < h * s * s * 4 / 2, short
  assert long < 1.5 * short, (short, long)
