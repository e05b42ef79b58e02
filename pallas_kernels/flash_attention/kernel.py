"""FlashAttention-2 in Pallas: forward, dq and dk/dv kernels.

Layouts (ops.py transposes and pads): q, dO [b, h, S, d]; k, v [b, kh, S, d];
segment ids [b, S] (padding: -2 for queries, -1 for keys, so padding matches
nothing). Query head n reads kv head n // g straight from its [b, kh, ...]
block: GQA never repeats K/V. Each program owns one query block (forward, dq)
or one key block (dk/dv) and loops only over the blocks the causal and window
masks leave partly visible; fully masked blocks are never loaded.

Shared K/V (MLA's latent space, `v is None`): the values are the leading
`value_dim` columns of the keys, so each key tile is read once for both, and
the value gradient is added into those columns of dk.

Triton loads and dots only power-of-two shapes, and MLA's widths are not
(576 = 512 latent + 64 RoPE; 192 = 128 + 64 without absorption). So q and k
are read as column parts of power-of-two widths (`column_parts`) and q.k is the
sum of the parts' products; dq and dk are stored part by part. In shared mode
the first part is exactly the values.

Masked logits are a large finite negative (not -inf), so a row that sees
nothing (only padding rows do) gives finite garbage that ops.py slices off.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

NEG = -1e30  # masked logit


def _pow2_parts(start: int, width: int):
  """[start, start + width) as (offset, size) ranges of power-of-two sizes, largest first."""
  parts = []
  for bit in reversed(range(width.bit_length())):
    if width >> bit & 1:
      parts.append((start, 1 << bit))
      start += 1 << bit
  return parts


def column_parts(width: int, value_dim: int = 0) -> tuple[tuple[int, int], ...]:
  """Power-of-two column ranges covering a q/k row of `width`; with `value_dim` > 0
  (shared K/V) the first range is exactly the value columns [0, value_dim) (on a GPU
  the value width must then be a power of two itself)."""
  if value_dim:
    return ((0, value_dim), *_pow2_parts(value_dim, width - value_dim))
  return tuple(_pow2_parts(0, width))


def column_loads(ref, rows, parts):
  """ref[rows] as one array per column part."""
  return tuple(ref[(*rows, pl.ds(a, w))] for a, w in parts)


def store_columns(ref, rows, values, parts):
  for (a, w), x in zip(parts, values):
    ref[(*rows, pl.ds(a, w))] = x.astype(ref.dtype)


def _kv_blocks(q_block, block_q: int, block_k: int, window: int, num_k: int):
  """[lo, hi): key blocks query block `q_block` can see (causal, window)."""
  q_start = q_block * block_q
  hi = jnp.minimum(num_k, (q_start + block_q - 1) // block_k + 1)
  lo = 0 if window <= 0 else jnp.maximum(0, (q_start - window + 1) // block_k)
  return lo, hi


def _q_blocks(k_block, block_q: int, block_k: int, window: int, num_q: int):
  """[lo, hi): query blocks that can see some key of key block `k_block`."""
  k_start = k_block * block_k
  lo = k_start // block_q
  hi = num_q if window <= 0 else jnp.minimum(num_q, (k_start + block_k - 2 + window) // block_q + 1)
  return lo, hi


def _qk(qs, ks):
  """sum over the column parts of q_p @ k_p^T, f32 [bq, bk]."""
  nt = (((1,), (1,)), ((), ()))
  return sum(
    jax.lax.dot_general(q, k, nt, preferred_element_type=jnp.float32) for q, k in zip(qs, ks)
  )


def _logits(qs, ks, q_idx, k_idx, q_seg, k_seg, scale, softcap, window):
  """(raw logits, soft-capped and masked logits, tanh or None, mask) of one tile."""
  s = _qk(qs, ks) * scale
  keep = (k_idx[None, :] <= q_idx[:, None]) & (q_seg[:, None] == k_seg[None, :])
  if window > 0:
    keep &= q_idx[:, None] - k_idx[None, :] < window
  t = None
  capped = s
  if softcap > 0:
    t = jnp.tanh(s / softcap)
    capped = softcap * t
  return s, jnp.where(keep, capped, NEG), t, keep


def _key_tile(k_ref, v_ref, kseg_ref, j, block_k: int, parts):
  """Key block j: (k column parts, v [bk, dv], key positions [bk], key segments [bk])."""
  rows = pl.ds(j * block_k, block_k)
  ks = column_loads(k_ref, (rows,), parts)
  v = ks[0] if v_ref is None else v_ref[rows, :]
  return ks, v, j * block_k + jnp.arange(block_k), kseg_ref[rows]


def _shared_kv(kernel, outputs_with_v: bool = False):
  """`kernel` called without a v input (and dv output): those refs are None."""

  def run(q_ref, k_ref, *rest):
    if outputs_with_v:
      *rest, dk_ref = rest
      return kernel(q_ref, k_ref, None, *rest, dk_ref, None)
    return kernel(q_ref, k_ref, None, *rest)

  return run


def _fwd_kernel(
  q_ref, k_ref, v_ref, qseg_ref, kseg_ref, sink_ref, o_ref, lse_ref, mx_ref,
  *, scale, softcap, window, block_q, block_k, num_k, has_sinks, value_dim, parts,
):  # fmt: skip
  qi = pl.program_id(2)
  qs = column_loads(q_ref, (slice(None),), parts)  # [bq, d] in column parts
  q_idx = qi * block_q + jnp.arange(block_q)
  q_seg = qseg_ref[...]

  def body(j, carry):
    m, l, acc, mx = carry
    ks, v, k_idx, k_seg = _key_tile(k_ref, v_ref, kseg_ref, j, block_k, parts)
    raw, s, _, keep = _logits(qs, ks, q_idx, k_idx, q_seg, k_seg, scale, softcap, window)
    mx = jnp.maximum(mx, jnp.max(jnp.where(keep, raw, NEG), axis=1))
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    l = alpha * l + jnp.sum(p, axis=1)
    pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, l, alpha[:, None] * acc + pv, mx

  lo, hi = _kv_blocks(qi, block_q, block_k, window, num_k)
  init = (
    jnp.full((block_q,), NEG, jnp.float32),
    jnp.zeros((block_q,), jnp.float32),
    jnp.zeros((block_q, value_dim), jnp.float32),
    jnp.full((block_q,), NEG, jnp.float32),
  )
  m, l, acc, mx = jax.lax.fori_loop(lo, hi, body, init)
  if has_sinks:  # one more logit per row, with no value: only the denominator grows
    sink = sink_ref[0].astype(jnp.float32)
    m_all = jnp.maximum(m, sink)
    rescale = jnp.exp(m - m_all)
    l = l * rescale + jnp.exp(sink - m_all)
    acc = acc * rescale[:, None]
    m = m_all
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)
  mx_ref[...] = mx


def _dq_kernel(
  q_ref, k_ref, v_ref, qseg_ref, kseg_ref, do_ref, lse_ref, delta_ref, dq_ref,
  *, scale, softcap, window, block_q, block_k, num_k, parts,
):  # fmt: skip
  qi = pl.program_id(2)
  qs, do = column_loads(q_ref, (slice(None),), parts), do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_idx = qi * block_q + jnp.arange(block_q)
  q_seg = qseg_ref[...]

  def body(j, dq):
    ks, v, k_idx, k_seg = _key_tile(k_ref, v_ref, kseg_ref, j, block_k, parts)
    _, s, t, _ = _logits(qs, ks, q_idx, k_idx, q_seg, k_seg, scale, softcap, window)
    p = jnp.exp(s - lse[:, None])
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    ds = p * (dp - delta[:, None])
    if t is not None:
      ds = ds * (1 - t * t)
    ds = ds.astype(ks[0].dtype)
    return tuple(a + jnp.dot(ds, k, preferred_element_type=jnp.float32) for a, k in zip(dq, ks))

  lo, hi = _kv_blocks(qi, block_q, block_k, window, num_k)
  dq = jax.lax.fori_loop(lo, hi, body, tuple(jnp.zeros(q.shape, jnp.float32) for q in qs))
  store_columns(dq_ref, (slice(None),), [x * scale for x in dq], parts)


def _dkv_kernel(
  q_ref, k_ref, v_ref, qseg_ref, kseg_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref,
  *, scale, softcap, window, block_q, block_k, num_q, group, parts,
):  # fmt: skip
  kj = pl.program_id(3)  # grid (batch, kv head, head split, key block)
  ks = column_loads(k_ref, (slice(None),), parts)  # [bk, d] in column parts
  v = ks[0] if v_ref is None else v_ref[...]  # [bk, dv]
  k_idx = kj * block_k + jnp.arange(block_k)
  k_seg = kseg_ref[...]

  shared = v_ref is None  # the values are dk's first column part: one accumulator for both

  def body(i, carry, n):
    dk, dv = carry
    start = i * block_q
    qs = column_loads(q_ref, (n, pl.ds(start, block_q)), parts)
    do = do_ref[n, pl.ds(start, block_q), :]
    lse = lse_ref[n, pl.ds(start, block_q)]
    delta = delta_ref[n, pl.ds(start, block_q)]
    q_idx = start + jnp.arange(block_q)
    _, s, t, _ = _logits(
      qs, ks, q_idx, k_idx, qseg_ref[pl.ds(start, block_q)], k_seg, scale, softcap, window
    )
    p = jnp.exp(s - lse[:, None])  # [bq, bk]
    tr = (((0,), (0,)), ((), ()))  # contract the query axis: p^T @ do
    pv = jax.lax.dot_general(p.astype(do.dtype), do, tr, preferred_element_type=jnp.float32)
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    ds = p * (dp - delta[:, None]) * scale
    if t is not None:
      ds = ds * (1 - t * t)
    ds = ds.astype(qs[0].dtype)
    dk = [a + jax.lax.dot_general(ds, q, tr, preferred_element_type=jnp.float32)
          for a, q in zip(dk, qs)]  # fmt: skip
    if shared:
      dk[0] = dk[0] + pv
    else:
      dv = dv + pv
    return tuple(dk), dv

  lo, hi = _q_blocks(kj, block_q, block_k, window, num_q)
  dv = None if shared else jnp.zeros(v.shape, jnp.float32)
  carry = (tuple(jnp.zeros(k.shape, jnp.float32) for k in ks), dv)
  for n in range(group):  # the query heads that share this kv head
    carry = jax.lax.fori_loop(lo, hi, functools.partial(body, n=n), carry)
  dk, dv = carry
  if not shared:
    dv_ref[...] = dv.astype(dv_ref.dtype)
  store_columns(dk_ref, (slice(None),), dk, parts)


def forward(
  q, k, v, q_seg, k_seg, sinks, *, scale, softcap, window, block_q, block_k, interpret,
  value_dim=0, compiler_params=None,
):  # fmt: skip
  """q [b, h, S, d], k [b, kh, S, d], v [b, kh, S, dv] or None (values = the first
  `value_dim` columns of k), segs [b, S], sinks [h] or None -> (out [b, h, S, dv],
  lse [b, h, S], row max of the raw logits [b, h, S])."""
  b, h, seq, d = q.shape
  kh = k.shape[1]
  dv = value_dim if v is None else v.shape[-1]
  g = h // kh
  num_q, num_k = seq // block_q, seq // block_k
  kernel = functools.partial(
    _fwd_kernel, scale=scale, softcap=softcap, window=window, block_q=block_q,
    block_k=block_k, num_k=num_k, has_sinks=sinks is not None, value_dim=dv,
    parts=column_parts(d, value_dim if v is None else 0),
  )  # fmt: skip
  sinks = jnp.zeros((h,), jnp.float32) if sinks is None else sinks
  rows = pl.BlockSpec((None, None, block_q), lambda bi, n, i: (bi, n, i))
  kv_specs = [pl.BlockSpec((None, None, seq, d), lambda bi, n, i: (bi, n // g, 0, 0))]
  if v is not None:
    kv_specs.append(pl.BlockSpec((None, None, seq, dv), lambda bi, n, i: (bi, n // g, 0, 0)))
  return pl.pallas_call(
    kernel if v is not None else _shared_kv(kernel),
    grid=(b, h, num_q),
    in_specs=[
      pl.BlockSpec((None, None, block_q, d), lambda bi, n, i: (bi, n, i, 0)),
      *kv_specs,
      pl.BlockSpec((None, block_q), lambda bi, n, i: (bi, i)),
      pl.BlockSpec((None, seq), lambda bi, n, i: (bi, 0)),
      pl.BlockSpec((1,), lambda bi, n, i: (n,)),
    ],
    out_specs=[
      pl.BlockSpec((None, None, block_q, dv), lambda bi, n, i: (bi, n, i, 0)),
      rows,
      rows,
    ],
    out_shape=[
      jax.ShapeDtypeStruct((b, h, seq, dv), q.dtype),
      jax.ShapeDtypeStruct((b, h, seq), jnp.float32),
      jax.ShapeDtypeStruct((b, h, seq), jnp.float32),
    ],
    interpret=interpret,
    compiler_params=compiler_params,
    name="flash_attention_fwd",
  )(q, k, *([] if v is None else [v]), q_seg, k_seg, sinks)


def backward(
  q, k, v, q_seg, k_seg, do, lse, delta, *, scale, softcap, window, block_q, block_k, interpret,
  value_dim=0, compiler_params=None, dkv_heads=0,
):  # fmt: skip
  """-> dq [b, h, S, d], dk [b, kh, S, d], dv [b, kh, S, dv] (None when v is None: its
  gradient is inside dk), f32 accumulation. `dkv_heads` (0: all g): query heads per
  dk/dv program; fewer spreads an MQA kv head (MLA: g = all heads) over more programs."""
  b, h, seq, d = q.shape
  kh = k.shape[1]
  dv_dim = value_dim if v is None else v.shape[-1]
  g = h // kh
  num_q, num_k = seq // block_q, seq // block_k
  common = dict(
    scale=scale, softcap=softcap, window=window, block_q=block_q, block_k=block_k,
    parts=column_parts(d, value_dim if v is None else 0),
  )  # fmt: skip
  kv_specs = [pl.BlockSpec((None, None, seq, d), lambda bi, n, i: (bi, n // g, 0, 0))]
  if v is not None:
    kv_specs.append(pl.BlockSpec((None, None, seq, dv_dim), lambda bi, n, i: (bi, n // g, 0, 0)))
  kv = [k] if v is None else [k, v]
  q_rows = pl.BlockSpec((None, None, block_q), lambda bi, n, i: (bi, n, i))
  dq_kernel = functools.partial(_dq_kernel, num_k=num_k, **common)
  dq = pl.pallas_call(
    dq_kernel if v is not None else _shared_kv(dq_kernel),
    grid=(b, h, num_q),
    in_specs=[
      pl.BlockSpec((None, None, block_q, d), lambda bi, n, i: (bi, n, i, 0)),
      *kv_specs,
      pl.BlockSpec((None, block_q), lambda bi, n, i: (bi, i)),
      pl.BlockSpec((None, seq), lambda bi, n, i: (bi, 0)),
      pl.BlockSpec((None, None, block_q, dv_dim), lambda bi, n, i: (bi, n, i, 0)),
      q_rows,
      q_rows,
    ],
    out_specs=pl.BlockSpec((None, None, block_q, d), lambda bi, n, i: (bi, n, i, 0)),
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    interpret=interpret,
    compiler_params=compiler_params,
    name="flash_attention_dq",
  )(q, *kv, q_seg, k_seg, do, lse, delta)
  # dk/dv: one program per (batch, kv head, head split, key block) loops over `dkv_heads`
  # of the kv head's g query heads; with several splits each writes an f32 partial.
  dkv_heads = dkv_heads or g
  if g % dkv_heads:
    raise ValueError(f"dkv_heads={dkv_heads} must divide the {g} query heads per kv head")
  splits = g // dkv_heads
  grouped = lambda x: x.reshape(b, kh, g, *x.shape[2:])
  group_spec = lambda *tail: pl.BlockSpec(
    (None, None, dkv_heads, seq, *tail), lambda bi, n, p, j: (bi, n, p, 0, *(0,) * len(tail))
  )
  key_block = lambda width: pl.BlockSpec(
    (None, None, block_k, width), lambda bi, n, p, j: (bi, n, j, 0)
  )

  def grad_out(x):  # (spec, shape) of dk or dv: [b, kh, S, .], or per split in f32
    if splits == 1:
      return key_block(x.shape[-1]), jax.ShapeDtypeStruct(x.shape, x.dtype)
    spec = pl.BlockSpec(
      (None, None, None, block_k, x.shape[-1]), lambda bi, n, p, j: (bi, n, p, j, 0)
    )
    return spec, jax.ShapeDtypeStruct((b, kh, splits, seq, x.shape[-1]), jnp.float32)

  dkv_kernel = functools.partial(_dkv_kernel, num_q=num_q, group=dkv_heads, **common)
  outs = [grad_out(x) for x in kv]
  grads = pl.pallas_call(
    dkv_kernel if v is not None else _shared_kv(dkv_kernel, outputs_with_v=True),
    grid=(b, kh, splits, num_k),
    in_specs=[
      group_spec(d),
      key_block(d),
      *([] if v is None else [key_block(dv_dim)]),
      pl.BlockSpec((None, seq), lambda bi, n, p, j: (bi, 0)),
      pl.BlockSpec((None, block_k), lambda bi, n, p, j: (bi, j)),
      group_spec(dv_dim),
      group_spec(),
      group_spec(),
    ],
    out_specs=[spec for spec, _ in outs],
    out_shape=[shape for _, shape in outs],
    interpret=interpret,
    compiler_params=compiler_params,
    name="flash_attention_dkv",
  )(grouped(q), *kv, q_seg, k_seg, grouped(do), grouped(lse), grouped(delta))
  if splits > 1:
    grads = [jnp.sum(x, axis=2).astype(y.dtype) for x, y in zip(grads, kv)]
  dk, dv = (grads[0], None) if v is None else grads
  return dq, dk, dv
