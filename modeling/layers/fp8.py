"""FP8-style linear layers: DeepSeek-V3's tile-scaled E4M3 recipe, emulated in JAX.

Each linear matmul `y = x @ w` (x [M, K], w [K, N]) runs on quantized operands:

- forward: x in 1x128 tiles (one scale per token per 128 input channels), w in
  128x128 blocks; accumulation in float32;
- dgrad:   dx = q(dy, 1x128) @ q(w, 128x128)^T;
- wgrad:   dw = q(x, 128x1)^T @ q(dy, 128x1) (tiles along the token axis);
- gradients are straight-through: quantization is not differentiated, only the
  operands of each backward matmul are quantized. `grad_dtype` picks E4M3
  (DeepSeek) or E5M2 (Transformer Engine's choice) for dy.

A scale is `max(amax, 1e-4) / fmax` per tile (online, no amax history), or that
rounded up to a power of two (`pow2`, DeepSeek-V3.1's ue8m0). The forward keeps
x as the fp8 tensor plus its scales for the backward, which re-quantizes it in
128x1 tiles.

Two ways to run a quantized matmul (`dot`):
- `qdq`: dequantize both operands to the compute dtype, one dot with float32
  accumulation. Any backend.
- `blockwise`: fp8 operands go to the dot itself, one dot per 128-wide slice of
  K, each partial product rescaled by its tiles' scales and summed in float32
  (DeepSeek's promotion every N_C=128). On GPUs with fp8 tensor cores XLA
  lowers each slice to an fp8 GEMM; on CPU it upcasts, so the numbers can be
  checked anywhere.
Grouped (ragged) expert matmuls always use `qdq`.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from modeling.layers import grouped, linear

TILE = 128
FP8_DTYPES = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}


@dataclasses.dataclass(frozen=True)
class Fp8:
  """FP8-style linear layers; None in a component config = off."""

  grad_dtype: str = "e4m3"  # e4m3 | e5m2: the type gradients are quantized to.
  dot: str = "qdq"  # qdq (dequantize, then dot) | blockwise (fp8 dot per 128 of K).
  pow2_scales: bool = False  # tile scales rounded up to powers of two (ue8m0).


def quantize(x, tile: tuple[int, int], dtype=jnp.float8_e4m3fn, pow2: bool = False):
  """x [..., R, C] -> (q [..., R, C] in `dtype`, scales [..., ceil(R/tr), ceil(C/tc)] f32).

  Tiles cover the last two axes; ragged edges are padded with zeros for the amax.
  `q * scale` (scale broadcast over its tile) approximates x.
  """
  tr, tc = tile
  *lead, rows, cols = x.shape
  pad = [(0, 0)] * len(lead) + [(0, -rows % tr), (0, -cols % tc)]
  xp = jnp.pad(x.astype(jnp.float32), pad)
  r, c = xp.shape[-2] // tr, xp.shape[-1] // tc
  tiles = xp.reshape(*lead, r, tr, c, tc)
  fmax = float(jnp.finfo(dtype).max)
  scale = jnp.maximum(jnp.max(jnp.abs(tiles), axis=(-3, -1)), 1e-4) / fmax
  if pow2:
    mantissa, exponent = jnp.frexp(scale)  # scale = mantissa * 2^exponent, mantissa in [0.5, 1)
    scale = jnp.ldexp(jnp.ones_like(scale), jnp.where(mantissa == 0.5, exponent - 1, exponent))
  q = jnp.clip(tiles / scale[..., :, None, :, None], -fmax, fmax).astype(dtype)
  return q.reshape(xp.shape)[..., :rows, :cols], scale


def expand(scale, tile: tuple[int, int], shape) -> jax.Array:
  """Per-tile scales [..., r, c] -> per-element [..., R, C] (`shape`'s last two)."""
  full = jnp.repeat(jnp.repeat(scale, tile[0], axis=-2), tile[1], axis=-1)
  return full[..., : shape[-2], : shape[-1]]


def dequantize(q, scale, tile: tuple[int, int], dtype=jnp.float32):
  return (q.astype(jnp.float32) * expand(scale, tile, q.shape)).astype(dtype)


def qdq(x, tile: tuple[int, int], dtype=jnp.float8_e4m3fn, pow2: bool = False):
  """Quantize-dequantize round trip, in x's dtype."""
  return dequantize(*quantize(x, tile, dtype, pow2), tile, x.dtype)


# A quantized operand: (fp8 values, per-tile scales, tile shape).
def _q(x, tile, dtype, cfg: Fp8):
  return quantize(x, tile, dtype, cfg.pow2_scales) + (tile,)


def _blockwise(a, b, out_dtype):
  """a [M, K] in (1, T) tiles, b [K, N] in (T, tn) tiles -> a @ b in float32.

  One fp8 dot per T-slice of K, rescaled by sa[:, k] (rows) and sb[k, :] (columns).
  """
  (aq, sa, _), (bq, sb, (_, tn)) = a, b
  k = aq.shape[-1]
  pad = -k % TILE
  aq = jnp.pad(aq, [(0, 0), (0, pad)]).reshape(aq.shape[0], -1, TILE).swapaxes(0, 1)
  bq = jnp.pad(bq, [(0, pad), (0, 0)]).reshape(-1, TILE, bq.shape[-1])
  sb = jnp.repeat(sb, tn, axis=-1)[:, : bq.shape[-1]]  # [Kb, N]

  def add(acc, slices):
    a_k, b_k, sa_k, sb_k = slices
    partial = jax.lax.dot(a_k, b_k, preferred_element_type=jnp.float32)
    return acc + partial * sa_k[:, None] * sb_k[None, :], None

  acc = jnp.zeros((aq.shape[1], bq.shape[-1]), jnp.float32)
  acc, _ = jax.lax.scan(add, acc, (aq, bq, sa.T, sb))
  return acc.astype(out_dtype)


def _qdq_dot(dot, a, b, dtype):
  return dot(dequantize(*a, dtype), dequantize(*b, dtype))


def _transpose(q):  # a quantized [.., R, C] operand as [.., C, R].
  values, scale, (tr, tc) = q
  return values.swapaxes(-1, -2), scale.swapaxes(-1, -2), (tc, tr)


# ---------------------------------------------------------------------------
# One custom VJP for every bilinear `dot(x [.., M, K], w [.., K, N]) -> [.., M, N]`:
# a plain matmul, a batched one (capacity experts) or a grouped ragged_dot.


def _dot_fns(kind: str, group_sizes):
  f32 = jnp.float32
  if kind == "dense":
    return lambda a, b: jnp.matmul(a, b, preferred_element_type=f32)
  return lambda a, b: grouped.ragged_dot(a, b, group_sizes, kind, preferred_element_type=f32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fp8_dot(kind, cfg, x, w, group_sizes):
  return _fp8_fwd(kind, cfg, x, w, group_sizes)[0]


def _fp8_fwd(kind, cfg, x, w, group_sizes):
  e4m3 = jnp.float8_e4m3fn
  xq = _q(x, (1, TILE), e4m3, cfg)
  wq = _q(w, (TILE, TILE), e4m3, cfg)
  if kind == "dense" and cfg.dot == "blockwise":
    y = _blockwise(xq, wq, jnp.float32)
  else:
    y = _qdq_dot(_dot_fns(kind, group_sizes), xq, wq, x.dtype)
  return y.astype(x.dtype), (xq[:2], w, group_sizes)


def _fp8_bwd(kind, cfg, residuals, dy):
  (xq, sx), w, group_sizes = residuals
  e4m3, grad_dtype, dt = jnp.float8_e4m3fn, FP8_DTYPES[cfg.grad_dtype], dy.dtype
  wq = _q(w, (TILE, TILE), e4m3, cfg)
  x = dequantize(xq, sx, (1, TILE), dt)
  dy_rows = _q(dy, (1, TILE), grad_dtype, cfg)  # dgrad: tiles along N.
  dy_cols = _q(dy, (TILE, 1), grad_dtype, cfg)  # wgrad: tiles along the token axis.
  x_cols = _q(x, (TILE, 1), e4m3, cfg)
  if kind == "dense" and cfg.dot == "blockwise":
    dx = _blockwise(dy_rows, _transpose(wq), dt)
    dw = _blockwise(_transpose(x_cols), dy_cols, w.dtype)
  else:
    # The dot is linear in each operand: its transposes give dgrad and wgrad on
    # the re-quantized operands.
    dot = _dot_fns(kind, group_sizes)
    w_dq, x_dq = dequantize(*wq, dt), dequantize(*x_cols, dt)
    (dx,) = jax.linear_transpose(lambda a: dot(a, w_dq), x)(dequantize(*dy_rows, jnp.float32))
    (dw,) = jax.linear_transpose(lambda b: dot(x_dq, b), w_dq)(dequantize(*dy_cols, jnp.float32))
  return dx.astype(dt), dw.astype(w.dtype), None


_fp8_dot.defvjp(_fp8_fwd, _fp8_bwd)


def matmul(x, w, cfg: Fp8):
  """x [M, K] @ w [K, N] with FP8-style operands; returns x.dtype."""
  return _fp8_dot("dense", cfg, x, w, None)


def batched_matmul(x, w, cfg: Fp8):
  """Per expert: x [X, M, K] @ w [X, K, N]."""
  return jax.vmap(lambda a, b: matmul(a, b, cfg))(x, w)


def ragged_matmul(x, w, group_sizes, cfg: Fp8, method: str = "ragged_dot"):
  """jax.lax.ragged_dot(x [T, K], w [E, K, N], group_sizes) with FP8-style operands,
  run by `grouped.ragged_dot`'s method (ragged_dot | blocks).

  x's 128-row tiles for the weight gradient may straddle two experts' rows.
  """
  return _fp8_dot(method, cfg, x, w, group_sizes)


def project(x, w, fp8: Fp8 | None, n_in: int = 1):
  """Contract x's last `n_in` axes with w's first `n_in` axes (a linear layer).

  Without `fp8` it is the plain einsum in x's dtype; with it, an FP8-style matmul
  of x flattened to [tokens, K] and w to [K, N] (the 2-D layout HF stores).
  """
  if fp8 is None:
    return linear.matmul(x, w.astype(x.dtype), n_in)
  lead, k = x.shape[: x.ndim - n_in], w.shape[:n_in]
  out = w.shape[n_in:]
  x2 = x.reshape(-1, math.prod(k))
  y = matmul(x2, w.reshape(x2.shape[-1], -1), fp8)
  return y.reshape(lead + out)
