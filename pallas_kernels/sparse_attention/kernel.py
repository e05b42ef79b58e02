"""Sparse attention in Pallas: forward and backward over gathered key blocks.

Layouts (ops.py transposes and pads): q, dO [b, kh, s, g, d] (the g query heads
of kv head n together); k [b, kh, t, d]; v [b, kh, t, dv]; indices [b, s, K]
with K a multiple of `block_k` and -1 in empty slots. One program owns one
query token and one kv head: its g heads form the rows of every matmul (DSA's
MQA core gives g = all heads, so each gathered key row serves all of them),
and it walks the token's slots `block_k` at a time, gathering those key and
value rows from the [t, d] tiles (`k_ref[idx]`) into an online softmax. Work
per token is O(K), whatever t is.

Attention sinks (one extra logit per head, no value) seed each row's online
softmax; heads without one get NEG there, which never weighs anything.

Backward recomputes each block's probabilities from the forward's log-sum-exp.
dq is one program's own sum. dk and dv gather nothing to one place: Pallas has
no portable atomic add, so each program writes its per-slot contributions
[K, d] and ops.py scatter-adds them into dk / dv (memory O(s K d) for that
buffer; a GPU kernel with atomics would not need it).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

NEG = -1e30  # logit of an empty slot


def _dot(a, b, contract):  # 2-D matmul over the given (a axis, b axis), float32 accumulation
  return jax.lax.dot_general(a, b, ((contract[:1], contract[1:]), ((), ())),
                             preferred_element_type=jnp.float32)  # fmt: skip


def _slots(idx_ref, k_ref, v_ref, j, block_k):
  """Slot block j: (valid [bk], gathered keys [bk, d], gathered values [bk, dv])."""
  idx = idx_ref[pl.ds(j * block_k, block_k)]
  safe = jnp.maximum(idx, 0)
  return idx >= 0, k_ref[safe, :], v_ref[safe, :]


def _fwd_kernel(idx_ref, q_ref, k_ref, v_ref, sink_ref, o_ref, lse_ref, mx_ref, *, scale, block_k):
  q = q_ref[...]  # [g, d]
  g = q.shape[0]
  sink = sink_ref[...]  # [g]: NEG when the heads have no sink

  def body(j, carry):
    m, l, acc, mx = carry
    valid, kb, vb = _slots(idx_ref, k_ref, v_ref, j, block_k)
    s = _dot(q, kb, (1, 1)) * scale  # [g, bk]
    mx = jnp.maximum(mx, jnp.max(jnp.where(valid[None], s, -jnp.inf), axis=1))
    s = jnp.where(valid[None], s, NEG)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    p = jnp.where(valid[None], jnp.exp(s - m_new[:, None]), 0.0)
    corr = jnp.exp(m - m_new)
    acc = acc * corr[:, None] + _dot(p.astype(vb.dtype), vb, (1, 0))
    return m_new, l * corr + jnp.sum(p, axis=1), acc, mx

  has_sink = sink > NEG / 2
  init = (  # the sink starts the softmax as a slot of weight 1 and no value
    sink,
    has_sink.astype(jnp.float32),
    jnp.zeros((g, v_ref.shape[-1]), jnp.float32),
    jnp.full((g,), -jnp.inf, jnp.float32),
  )
  m, l, acc, mx = jax.lax.fori_loop(0, idx_ref.shape[0] // block_k, body, init)
  seen = l > 0  # a token with only empty slots outputs 0
  o_ref[...] = (acc / jnp.where(seen, l, 1.0)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
  mx_ref[...] = mx


def _bwd_kernel(
  idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, *, scale,
  block_k,
):  # fmt: skip
  q, do = q_ref[...], do_ref[...]  # [g, d], [g, dv]
  lse, delta = lse_ref[...], delta_ref[...]  # [g]

  def body(j, dq):
    valid, kb, vb = _slots(idx_ref, k_ref, v_ref, j, block_k)
    s = _dot(q, kb, (1, 1)) * scale
    p = jnp.where(valid[None], jnp.exp(s - lse[:, None]), 0.0)  # [g, bk]
    dp = _dot(do, vb, (1, 1))  # [g, bk]
    ds = p * (dp - delta[:, None]) * scale
    rows = pl.ds(j * block_k, block_k)
    dv_ref[rows, :] = _dot(p.astype(do.dtype), do, (0, 0)).astype(dv_ref.dtype)  # [bk, dv]
    dk_ref[rows, :] = _dot(ds.astype(q.dtype), q, (0, 0)).astype(dk_ref.dtype)  # [bk, d]
    return dq + _dot(ds.astype(kb.dtype), kb, (1, 0))

  dq = jax.lax.fori_loop(0, idx_ref.shape[0] // block_k, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _specs(b, kh, s, g, t, d, dv, slots):
  token = lambda *tail: pl.BlockSpec((None, None, None, *tail), lambda bi, n, i: (bi, n, i) + (0,) * len(tail))  # fmt: skip
  return dict(
    idx=pl.BlockSpec((None, None, slots), lambda bi, n, i: (bi, i, 0)),
    k=pl.BlockSpec((None, None, t, d), lambda bi, n, i: (bi, n, 0, 0)),
    v=pl.BlockSpec((None, None, t, dv), lambda bi, n, i: (bi, n, 0, 0)),
    sink=pl.BlockSpec((None, g), lambda bi, n, i: (n, 0)),
    token=token,
  )


@functools.partial(jax.jit, static_argnames=("scale", "block_k", "interpret"))
def forward(q, k, v, indices, sinks, *, scale: float, block_k: int, interpret: bool = False):
  """sinks [kh, g] f32 (NEG: none) -> (out [b, kh, s, g, dv], lse [b, kh, s, g] f32,
  row max of raw logits [b, kh, s, g])."""
  b, kh, s, g, d = q.shape
  t, dv, slots = k.shape[2], v.shape[-1], indices.shape[-1]
  sp = _specs(b, kh, s, g, t, d, dv, slots)
  row = jax.ShapeDtypeStruct((b, kh, s, g), jnp.float32)
  return pl.pallas_call(
    functools.partial(_fwd_kernel, scale=scale, block_k=block_k),
    grid=(b, kh, s),
    in_specs=[sp["idx"], sp["token"](g, d), sp["k"], sp["v"], sp["sink"]],
    out_specs=[sp["token"](g, dv), sp["token"](g), sp["token"](g)],
    out_shape=[jax.ShapeDtypeStruct((b, kh, s, g, dv), q.dtype), row, row],
    interpret=interpret,
  )(indices, q, k, v, sinks)


@functools.partial(jax.jit, static_argnames=("scale", "block_k", "interpret"))
def backward(q, k, v, indices, do, lse, delta, *, scale: float, block_k: int, interpret=False):
  """-> (dq [b, kh, s, g, d], per-slot dk [b, kh, s, K, d] and dv [b, kh, s, K, dv])."""
  b, kh, s, g, d = q.shape
  t, dv, slots = k.shape[2], v.shape[-1], indices.shape[-1]
  sp = _specs(b, kh, s, g, t, d, dv, slots)
  return pl.pallas_call(
    functools.partial(_bwd_kernel, scale=scale, block_k=block_k),
    grid=(b, kh, s),
    in_specs=[
      sp["idx"],
      sp["token"](g, d),
      sp["k"],
      sp["v"],
      sp["token"](g, dv),
      sp["token"](g),
      sp["token"](g),
    ],  # fmt: skip
    out_specs=[sp["token"](g, d), sp["token"](slots, d), sp["token"](slots, dv)],
    out_shape=[
      jax.ShapeDtypeStruct((b, kh, s, g, d), q.dtype),
      jax.ShapeDtypeStruct((b, kh, s, slots, d), jnp.float32),
      jax.ShapeDtypeStruct((b, kh, s, slots, dv), jnp.float32),
    ],
    interpret=interpret,
  )(indices, q, k, v, do, lse, delta)
