"""Sparse attention in Pallas: forward and backward over gathered key blocks.

Layouts (ops.py transposes and pads): q, dO [b, kh, s, g, d] (the g query heads
of kv head n together); k [b, kh, t, d]; v [b, kh, t, dv]; indices [b, s, K]
with K a multiple of `block_k` and -1 in empty slots. One program owns one
query token and one kv head: its g heads form the rows of every matmul (DSA's
MQA core gives g = all heads, so each gathered key row serves all of them),
and it walks the token's slots `block_k` at a time, gathering those key and
value rows from the [t, d] tiles (`k_ref[idx]`) into an online softmax. Work
per token is O(K), whatever t is. The g heads are taken `block_h` at a time
(each block a full pass over the slots), so a program's registers hold one
[block_h, d] query block whatever g is (DSA has g = 128). Triton needs power-
of-two shapes: ops.py pads g to a multiple of `block_h` (>= 16 on a GPU, the
smallest dot), and q and k are read as power-of-two column parts
(flash_attention.kernel.column_parts: 576 = 512 + 64).

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

from pallas_kernels.flash_attention.kernel import column_loads, column_parts, store_columns

NEG = -1e30  # logit of an empty slot


def _dot(a, b, contract):  # 2-D matmul over the given (a axis, b axis), float32 accumulation
  return jax.lax.dot_general(a, b, ((contract[:1], contract[1:]), ((), ())),
                             preferred_element_type=jnp.float32)  # fmt: skip


def _slots(idx_ref, k_ref, v_ref, j, block_k, parts):
  """Slot block j: (valid [bk], gathered key column parts [bk, w], values [bk, dv])."""
  idx = idx_ref[pl.ds(j * block_k, block_k)]
  safe = jnp.maximum(idx, 0)
  return idx >= 0, column_loads(k_ref, (safe,), parts), v_ref[safe, :]


def _logits(qs, ks, scale):  # [bh, bk] f32: the sum of the column parts' products
  return sum(_dot(q, k, (1, 1)) for q, k in zip(qs, ks)) * scale


def _fwd_kernel(
  idx_ref, q_ref, k_ref, v_ref, sink_ref, o_ref, lse_ref, mx_ref, *, scale, block_k, block_h,
  parts,
):  # fmt: skip
  num_blocks = idx_ref.shape[0] // block_k

  def head_block(hb, _):
    heads = pl.ds(hb * block_h, block_h)
    qs = column_loads(q_ref, (heads,), parts)  # [bh, d] in column parts
    sink = sink_ref[heads]  # [bh]: NEG when the heads have no sink

    def body(j, carry):
      m, l, acc, mx = carry
      valid, ks, vb = _slots(idx_ref, k_ref, v_ref, j, block_k, parts)
      s = _logits(qs, ks, scale)  # [bh, bk]
      mx = jnp.maximum(mx, jnp.max(jnp.where(valid[None], s, -jnp.inf), axis=1))
      s = jnp.where(valid[None], s, NEG)
      m_new = jnp.maximum(m, jnp.max(s, axis=1))
      p = jnp.where(valid[None], jnp.exp(s - m_new[:, None]), 0.0)
      corr = jnp.exp(m - m_new)
      acc = acc * corr[:, None] + _dot(p.astype(vb.dtype), vb, (1, 0))
      return m_new, l * corr + jnp.sum(p, axis=1), acc, mx

    init = (  # the sink starts the softmax as a slot of weight 1 and no value
      sink,
      (sink > NEG / 2).astype(jnp.float32),
      jnp.zeros((block_h, v_ref.shape[-1]), jnp.float32),
      jnp.full((block_h,), -jnp.inf, jnp.float32),
    )
    m, l, acc, mx = jax.lax.fori_loop(0, num_blocks, body, init)
    seen = l > 0  # a token with only empty slots outputs 0
    o_ref[heads, :] = (acc / jnp.where(seen, l, 1.0)[:, None]).astype(o_ref.dtype)
    lse_ref[heads] = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
    mx_ref[heads] = mx
    return 0

  jax.lax.fori_loop(0, q_ref.shape[0] // block_h, head_block, 0)


def _bwd_kernel(
  idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, *, scale,
  block_k, block_h, parts,
):  # fmt: skip
  num_blocks, num_head_blocks = idx_ref.shape[0] // block_k, q_ref.shape[0] // block_h

  def head_block(hb, _):
    heads = pl.ds(hb * block_h, block_h)
    qs, do = column_loads(q_ref, (heads,), parts), do_ref[heads, :]  # [bh, d] parts, [bh, dv]
    lse, delta = lse_ref[heads], delta_ref[heads]  # [bh]

    def body(j, dq):
      valid, ks, vb = _slots(idx_ref, k_ref, v_ref, j, block_k, parts)
      p = jnp.where(valid[None], jnp.exp(_logits(qs, ks, scale) - lse[:, None]), 0.0)
      ds = p * (_dot(do, vb, (1, 1)) - delta[:, None]) * scale  # [bh, bk]
      rows = pl.ds(j * block_k, block_k)

      def add(ref, idx, x):  # the first head block writes the slot rows, later ones add
        ref[idx] = x if num_head_blocks == 1 else jnp.where(hb == 0, x, ref[idx] + x)

      add(dv_ref, (rows, slice(None)), _dot(p.astype(do.dtype), do, (0, 0)))  # [bk, dv]
      for (a, w), q in zip(parts, qs):
        add(dk_ref, (rows, pl.ds(a, w)), _dot(ds.astype(q.dtype), q, (0, 0)))  # [bk, w]
      ds = ds.astype(ks[0].dtype)
      return tuple(a + _dot(ds, k, (1, 0)) for a, k in zip(dq, ks))

    zeros = tuple(jnp.zeros(q.shape, jnp.float32) for q in qs)
    dq = jax.lax.fori_loop(0, num_blocks, body, zeros)
    store_columns(dq_ref, (heads,), dq, parts)
    return 0

  jax.lax.fori_loop(0, num_head_blocks, head_block, 0)


def _specs(g, t, d, dv, slots):
  token = lambda *tail: pl.BlockSpec((None, None, None, *tail), lambda bi, n, i: (bi, n, i) + (0,) * len(tail))  # fmt: skip
  return dict(
    idx=pl.BlockSpec((None, None, slots), lambda bi, n, i: (bi, i, 0)),
    k=pl.BlockSpec((None, None, t, d), lambda bi, n, i: (bi, n, 0, 0)),
    v=pl.BlockSpec((None, None, t, dv), lambda bi, n, i: (bi, n, 0, 0)),
    sink=pl.BlockSpec((None, g), lambda bi, n, i: (n, 0)),
    token=token,
  )


STATIC = ("scale", "block_k", "block_h", "interpret", "compiler_params")


@functools.partial(jax.jit, static_argnames=STATIC)
def forward(
  q, k, v, indices, sinks, *, scale: float, block_k: int, block_h: int, interpret: bool = False,
  compiler_params=None,
):  # fmt: skip
  """sinks [kh, g] f32 (NEG: none) -> (out [b, kh, s, g, dv], lse [b, kh, s, g] f32,
  row max of raw logits [b, kh, s, g])."""
  b, kh, s, g, d = q.shape
  t, dv, slots = k.shape[2], v.shape[-1], indices.shape[-1]
  sp = _specs(g, t, d, dv, slots)
  row = jax.ShapeDtypeStruct((b, kh, s, g), jnp.float32)
  kw = dict(scale=scale, block_k=block_k, block_h=block_h, parts=column_parts(d))
  return pl.pallas_call(
    functools.partial(_fwd_kernel, **kw),
    grid=(b, kh, s),
    in_specs=[sp["idx"], sp["token"](g, d), sp["k"], sp["v"], sp["sink"]],
    out_specs=[sp["token"](g, dv), sp["token"](g), sp["token"](g)],
    out_shape=[jax.ShapeDtypeStruct((b, kh, s, g, dv), q.dtype), row, row],
    interpret=interpret,
    compiler_params=compiler_params,
    name="sparse_attention_fwd",
  )(indices, q, k, v, sinks)


@functools.partial(jax.jit, static_argnames=STATIC)
def backward(
  q, k, v, indices, do, lse, delta, *, scale: float, block_k: int, block_h: int,
  interpret: bool = False, compiler_params=None,
):  # fmt: skip
  """-> (dq [b, kh, s, g, d], per-slot dk [b, kh, s, K, d] and dv [b, kh, s, K, dv])."""
  b, kh, s, g, d = q.shape
  t, dv, slots = k.shape[2], v.shape[-1], indices.shape[-1]
  sp = _specs(g, t, d, dv, slots)
  kw = dict(scale=scale, block_k=block_k, block_h=block_h, parts=column_parts(d))
  return pl.pallas_call(
    functools.partial(_bwd_kernel, **kw),
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
    compiler_params=compiler_params,
    name="sparse_attention_bwd",
  )(indices, q, k, v, do, lse, delta)
