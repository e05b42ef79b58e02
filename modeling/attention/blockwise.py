"""Blockwise attention in plain JAX: the flash-attention algorithm without a kernel.

Queries and keys go in blocks of `block` positions; each query block runs an
online softmax over the key blocks it can see (causal, and the window), so the
forward keeps O(seq x block) of scores alive, never [seq, seq]. The backward is
the flash-attention backward (a custom VJP): from the saved output and row
log-sum-exp it recomputes each block's probabilities, once for dq (query block
by query block) and once for dk, dv (key block by key block), so training
memory is O(seq x block) too. Same contract and math as the XLA reference in
`dot_product.py` (GQA, value dim != key dim, packed documents, window, chunked
mask, soft-cap, sinks, per-head max logits), checked against it in
tests/test_blockwise_attention.py.

Loops over blocks are `fori_loop`s whose bounds depend on the block: the
masked-out blocks above the diagonal (and left of the window) are skipped.
Letters: b batch, k kv heads, g query heads per kv head, q/t query/key positions
in a block, d head dim, v value head dim.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e30  # the running max before any key was seen: exp(-inf - NEG) = 0, never nan


@dataclasses.dataclass(frozen=True)
class Spec:
  scale: float
  window: int
  chunk: int
  softcap: float
  block: int
  has_sinks: bool


@dataclasses.dataclass(frozen=True)
class Keys:
  """Where the queries and keys sit: segment ids and positions [b, S] of each,
  and the global index of the first query (the keys start at 0)."""

  q_seg: jax.Array
  k_seg: jax.Array
  q_pos: jax.Array
  k_pos: jax.Array
  offset: jax.Array  # int32 scalar, a multiple of the block


jax.tree_util.register_dataclass(
  Keys, data_fields=["q_seg", "k_seg", "q_pos", "k_pos", "offset"], meta_fields=[]
)


def attention(q, k, v, *, segment_ids, positions, scale, window=0, chunk=0, softcap=0.0,
              sinks=None, block=512):  # fmt: skip
  """q: [b, s, h, d]; k: [b, s, kh, d]; v: [b, s, kh, dv]; segment_ids, positions:
  [b, s]; sinks: [h] or None -> (out [b, s, h, dv], max_logits [h]).
  The sequence is padded to whole blocks (padding is its own document)."""
  s = q.shape[1]
  pad = -s % block
  pad_seq = lambda x, value=0: jnp.pad(
    x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=value
  )
  seg = pad_seq(segment_ids, -1)
  pos = pad_seq(positions if positions is not None else jnp.zeros_like(segment_ids))
  keys = Keys(seg, seg, pos, pos, jnp.zeros((), jnp.int32))
  out, max_logits = chunk_attention(
    pad_seq(q), pad_seq(k), pad_seq(v), keys, scale=scale, window=window, chunk=chunk,
    softcap=softcap, sinks=sinks, block=block,
  )  # fmt: skip
  return out[:, :s], max_logits


def chunk_attention(q, k, v, keys: Keys, *, scale, window=0, chunk=0, softcap=0.0, sinks=None,
                    block=512):  # fmt: skip
  """A chunk of queries q [b, Lq, h, d] at global positions keys.offset + i
  against keys k [b, Sk, kh, d] / values v [b, Sk, kh, dv] at 0..Sk-1 (Lq, Sk and
  the offset whole blocks) -> (out [b, Lq, h, dv], max_logits [h])."""
  b, lq, h, d = q.shape
  kh = k.shape[2]
  heads_first = lambda x: jnp.moveaxis(x, 1, -2)  # [b, ..., S, d]
  qg = heads_first(q.reshape(b, lq, kh, h // kh, d))  # [b, k, g, Lq, d]
  spec = Spec(scale, window, chunk, softcap, block, sinks is not None)
  sink = jnp.zeros((kh, h // kh), jnp.float32) if sinks is None else sinks.reshape(kh, -1)
  out, max_logits = _attend(qg, heads_first(k), heads_first(v), keys, sink, spec)
  out = jnp.moveaxis(out, -2, 1)  # [b, Lq, k, g, dv]
  return out.reshape(b, lq, h, v.shape[-1]), max_logits.reshape(h)


def _key_range(i, offset, spec: Spec, n_keys: int):
  """The key blocks query block i sees: [first, last + 1)."""
  B = spec.block
  first_query = offset + i * B
  first = jnp.maximum(0, (first_query - spec.window + 1) // B) if spec.window else 0
  return first, jnp.minimum(n_keys, first_query // B + 1)


def _query_range(j, offset, spec: Spec, n_queries: int):
  """The query blocks that see key block j: [first, end)."""
  B = spec.block
  first = jnp.maximum(0, j - offset // B)
  if not spec.window:
    return first, n_queries
  last_query = (j + 1) * B - 1 + spec.window - 1
  return first, jnp.clip((last_query - offset) // B + 1, first, n_queries)


def _block(x, i, block, axis=-2):
  return jax.lax.dynamic_slice_in_dim(x, i * block, block, axis)


def _logits(q, k, keys: Keys, i, j, spec: Spec):
  """(raw logits, capped logits with the mask applied, mask) of query block i
  against key block j; q [b, k, g, q, d] and k [b, k, t, d] are those blocks."""
  B = spec.block
  raw = jnp.einsum("bkgqd,bktd->bkgqt", q, k, preferred_element_type=jnp.float32) * spec.scale
  qi = keys.offset + i * B + jnp.arange(B)
  kj = j * B + jnp.arange(B)
  mask = (kj[None, :] <= qi[:, None])[None]
  if spec.window:
    mask &= (qi[:, None] - kj[None, :] < spec.window)[None]
  qs, ks = _block(keys.q_seg, i, B, 1), _block(keys.k_seg, j, B, 1)
  mask &= qs[:, :, None] == ks[:, None, :]
  if spec.chunk:
    qp, kp = _block(keys.q_pos, i, B, 1), _block(keys.k_pos, j, B, 1)
    mask &= (qp // spec.chunk)[:, :, None] == (kp // spec.chunk)[:, None, :]
  mask = mask[:, None, None]  # [b, 1, 1, q, t]
  capped = spec.softcap * jnp.tanh(raw / spec.softcap) if spec.softcap > 0 else raw
  return raw, jnp.where(mask, capped, -jnp.inf), mask


def _forward(q, k, v, keys: Keys, sink, spec: Spec):
  """-> (out [b, k, g, Lq, dv], lse [b, k, g, Lq], max_logits [k, g])."""
  B = spec.block
  n_q, n_k = q.shape[-2] // B, k.shape[-2] // B
  shape = q.shape[:-2] + (B,)

  def query_block(i):
    qi = _block(q, i, B)

    def key_block(j, carry):
      acc, m, l, top = carry
      raw, logits, mask = _logits(qi, _block(k, j, B), keys, i, j, spec)
      top = jnp.maximum(top, jnp.max(jnp.where(mask, raw, -jnp.inf), axis=(0, 3, 4)))
      m_new = jnp.maximum(m, logits.max(-1))
      p = jnp.exp(logits - m_new[..., None])
      fix = jnp.exp(m - m_new)
      vj = _block(v, j, B)
      pv = jnp.einsum(
        "bkgqt,bktv->bkgqv", p.astype(v.dtype), vj, preferred_element_type=jnp.float32
      )
      return acc * fix[..., None] + pv, m_new, l * fix + p.sum(-1), top

    init = (
      jnp.zeros(shape + (v.shape[-1],), jnp.float32),
      jnp.full(shape, NEG, jnp.float32),
      jnp.zeros(shape, jnp.float32),
      jnp.full(q.shape[1:3], -jnp.inf, jnp.float32),
    )
    acc, m, l, top = jax.lax.fori_loop(*_key_range(i, keys.offset, spec, n_k), key_block, init)
    if spec.has_sinks:  # one more logit per head that takes mass and has no value
      s = sink[None, :, :, None]
      m_new = jnp.maximum(m, s)
      fix = jnp.exp(m - m_new)
      acc, l, m = acc * fix[..., None], l * fix + jnp.exp(s - m_new), m_new
    return (acc / l[..., None]).astype(v.dtype), m + jnp.log(l), top

  out, lse, top = jax.lax.map(query_block, jnp.arange(n_q))  # [n, ...] per query block
  return _merge(out), _merge(lse, rows=False), top.max(0)


def _merge(x, rows: bool = True):
  """Per-block results [n, ..., block(, d)] -> [..., n * block(, d)]."""
  if rows:
    x = jnp.moveaxis(x, 0, -3)
    return x.reshape(x.shape[:-3] + (-1, x.shape[-1]))
  x = jnp.moveaxis(x, 0, -2)
  return x.reshape(x.shape[:-2] + (-1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attend(q, k, v, keys: Keys, sink, spec: Spec):
  out, _, top = _forward(q, k, v, keys, sink, spec)
  return out, top


def _attend_fwd(q, k, v, keys, sink, spec):
  out, lse, top = _forward(q, k, v, keys, sink, spec)
  return (out, top), (q, k, v, keys, sink, out, lse)


def _probs_and_dlogits(qi, kj, vj, do, lse, delta, keys, i, j, spec: Spec):
  """(P, dLogits) of query block i against key block j (the raw logits' gradient,
  through the soft-cap), from the saved lse and delta = rowsum(dO * O)."""
  raw, logits, _ = _logits(qi, kj, keys, i, j, spec)
  p = jnp.exp(logits - lse[..., None])
  dp = jnp.einsum("bkgqv,bktv->bkgqt", do, vj, preferred_element_type=jnp.float32)
  ds = p * (dp - delta[..., None])
  if spec.softcap > 0:
    ds = ds * (1.0 - jnp.square(jnp.tanh(raw / spec.softcap)))
  return p, ds


def _attend_bwd(spec: Spec, res, grads):
  q, k, v, keys, sink, out, lse = res
  do = grads[0].astype(jnp.float32)
  B = spec.block
  n_q, n_k = q.shape[-2] // B, k.shape[-2] // B
  delta = jnp.sum(do * out.astype(jnp.float32), -1)  # [b, k, g, Lq]
  blk = lambda x, i: _block(x, i, B)  # [..., S, d] -> block i
  vec = lambda x, i: _block(x, i, B, -1)  # [..., S] -> block i

  def dq_block(i):
    qi, doi, lse_i, delta_i = blk(q, i), blk(do, i), vec(lse, i), vec(delta, i)

    def key_block(j, dq):
      kj, vj = blk(k, j), blk(v, j)
      _, ds = _probs_and_dlogits(qi, kj, vj, doi, lse_i, delta_i, keys, i, j, spec)
      return dq + jnp.einsum("bkgqt,bktd->bkgqd", ds, kj, preferred_element_type=jnp.float32)

    zeros = jnp.zeros(qi.shape, jnp.float32)
    return jax.lax.fori_loop(*_key_range(i, keys.offset, spec, n_k), key_block, zeros) * spec.scale

  def dkv_block(j):
    kj, vj = blk(k, j), blk(v, j)

    def query_block(i, carry):
      dk, dv = carry
      qi, doi = blk(q, i), blk(do, i)
      p, ds = _probs_and_dlogits(qi, kj, vj, doi, vec(lse, i), vec(delta, i), keys, i, j, spec)
      dv = dv + jnp.einsum("bkgqt,bkgqv->bktv", p, doi, preferred_element_type=jnp.float32)
      return dk + jnp.einsum("bkgqt,bkgqd->bktd", ds, qi, preferred_element_type=jnp.float32), dv

    init = (jnp.zeros(kj.shape, jnp.float32), jnp.zeros(vj.shape, jnp.float32))
    dk, dv = jax.lax.fori_loop(*_query_range(j, keys.offset, spec, n_q), query_block, init)
    return dk * spec.scale, dv

  dq = _merge(jax.lax.map(dq_block, jnp.arange(n_q)))
  dk, dv = (_merge(x) for x in jax.lax.map(dkv_block, jnp.arange(n_k)))
  dsink = jnp.zeros_like(sink)
  if spec.has_sinks:  # d sink = -sum over rows of P_sink * delta
    p_sink = jnp.exp(sink[None, :, :, None] - lse)
    dsink = -jnp.sum(p_sink * delta, axis=(0, 3))
  no_grad = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), keys)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), no_grad,
          dsink.astype(sink.dtype))  # fmt: skip


_attend.defvjp(_attend_fwd, _attend_bwd)
