"""Specs for pallas_kernels/sparse_attention: the Pallas kernels (interpret mode on
CPU) equal the pure-jnp reference, outputs and gradients, over randomised shapes:
slot counts and lengths not a multiple of the block, GQA ratios 1/4/8, empty
slots, sinks, and the slot sets of windows and packed segments (which reach the
kernel as indices). Soft-capping is not a sparse-kernel feature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeling.attention import sparse
from pallas_kernels.flash_attention import reference as dense_reference
from pallas_kernels.sparse_attention import ops, reference

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _segments(seed, b, s, n):
  cuts = np.sort(np.random.default_rng(seed).integers(1, s, (b, n - 1)), axis=1)
  return jnp.asarray(np.stack([np.searchsorted(c, np.arange(s), side="right") for c in cuts]))


def _inputs(seed, b, s, h, kh, d, dv, dtype, topk, window, segments):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (b, s, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(keys[1], (b, s, kh, d), jnp.float32).astype(dtype)
  v = jax.random.normal(keys[2], (b, s, kh, dv), jnp.float32).astype(dtype)
  seg = _segments(seed, b, s, segments)
  valid = sparse.valid_keys(seg, window)
  scores = jnp.where(valid, jax.random.normal(keys[3], (b, s, s)), sparse.NEG)
  return q, k, v, seg, sparse.select(scores, topk)


CASES = [  # (b, s, h, kh, d, dv, topk, window, segments, block_k, sinks, block_h)
  (2, 40, 4, 4, 32, 32, 12, 0, 1, 8, False, 16),  # MHA; early queries have empty slots
  (1, 37, 8, 2, 16, 24, 10, 0, 3, 4, True, 16),  # GQA 4, packed, 10 slots = 2 blocks + 2, dv != d
  (2, 33, 8, 1, 48, 32, 16, 9, 2, 16, False, 16),  # MQA (8) as DSA runs it; window 9 < topk
  (1, 50, 4, 1, 20, 16, 7, 20, 4, 64, True, 16),  # block larger than the slots
  # 6 heads in 2 blocks of 4 (2 padding heads); q.k in column parts 32 + 16 (as 512 + 64)
  (1, 29, 6, 1, 48, 32, 9, 0, 2, 8, True, 4),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize(
  "case", CASES, ids=lambda c: f"s{c[1]}h{c[2]}kh{c[3]}k{c[6]}w{c[7]}{'sinks' if c[10] else ''}"
)
def test_kernel_matches_reference_outputs_and_gradients(case, dtype):
  b, s, h, kh, d, dv, topk, window, segments, block_k, with_sinks, block_h = case
  q, k, v, _, indices = _inputs(s + h, b, s, h, kh, d, dv, dtype, topk, window, segments)
  assert bool((indices < 0).any()) and bool((indices >= 0).any())  # both kinds of slot
  cotangent = jax.random.normal(jax.random.key(9), (b, s, h, dv), jnp.float32)
  sinks = jax.random.normal(jax.random.key(8), (h,), jnp.float32) if with_sinks else None

  def loss(impl, q, k, v, sinks):
    kw = dict(scale=d**-0.5, sinks=sinks, implementation=impl)
    if impl == "pallas":
      kw |= dict(block_k=block_k, block_h=block_h, interpret=True)
    out, mx = ops.sparse_attention(q, k, v, indices, **kw)
    return jnp.sum(out.astype(jnp.float32) * cotangent), (out, mx)

  argnums = (1, 2, 3, 4) if with_sinks else (1, 2, 3)
  grad = lambda impl: jax.grad(loss, argnums=argnums, has_aux=True)(impl, q, k, v, sinks)
  (got_grads, (got, got_mx)), (want_grads, (want, want_mx)) = grad("pallas"), grad("reference")
  tol = TOL[dtype]
  f32 = lambda x: np.asarray(x, np.float32)
  scale = lambda x: float(np.max(np.abs(f32(x)))) + 1.0
  np.testing.assert_allclose(f32(got), f32(want), atol=tol * scale(want), rtol=0)
  np.testing.assert_allclose(f32(got_mx), f32(want_mx), atol=tol * scale(want_mx), rtol=0)
  for name, g, w in zip(["q", "k", "v", "sinks"], got_grads, want_grads, strict=False):
    np.testing.assert_allclose(f32(g), f32(w), atol=tol * scale(w), rtol=0, err_msg=f"d{name}")


def test_every_visible_key_as_a_slot_is_dense_attention():
  """The reference's contract, checked against the dense flash reference: with a
  window, sinks and packed segments, slots = all visible keys gives dense attention."""
  b, s, h, kh, d = 2, 29, 4, 2, 16
  q, k, v, seg, indices = _inputs(3, b, s, h, kh, d, d, jnp.float32, s, 6, 3)
  sinks = jnp.linspace(-1.0, 2.0, h)
  got, got_mx = reference.attention(q, k, v, indices, scale=0.3, sinks=sinks, chunk=8)
  want, want_mx = dense_reference.attention(
    q, k, v, segment_ids=seg, scale=0.3, window=6, sinks=sinks
  )
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(got_mx, want_mx, atol=1e-5)


def test_chunked_reference_equals_unchunked():
  q, k, v, _, indices = _inputs(4, 2, 45, 4, 1, 16, 8, jnp.float32, 9, 0, 2)
  got = reference.attention(q, k, v, indices, scale=0.25, chunk=16)
  want = reference.attention(q, k, v, indices, scale=0.25)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(
    reference.slot_probs(q, k, indices, scale=0.25, chunk=16),
    reference.slot_probs(q, k, indices, scale=0.25),
    atol=1e-6,
  )


def test_a_query_with_only_empty_slots_outputs_zero_and_no_gradient():
  q, k, v, _, _ = _inputs(5, 1, 6, 2, 1, 8, 8, jnp.float32, 4, 0, 1)
  indices = jnp.full((1, 6, 4), -1, jnp.int32).at[:, 3:, 0].set(0)  # queries 0-2 see nothing

  def loss(q, k, v):
    out, _ = ops.sparse_attention(q, k, v, indices, scale=0.3, block_k=2, interpret=True)
    return jnp.sum(out), out

  (dq, _, _), out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  assert np.all(np.asarray(out[:, :3]) == 0) and np.all(np.asarray(dq[:, :3]) == 0)
  np.testing.assert_allclose(out[0, 3:, :, :], jnp.broadcast_to(v[0, 0, 0], (3, 2, 8)), atol=1e-6)
