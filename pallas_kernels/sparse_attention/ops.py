"""`sparse_attention`: the Pallas kernels behind a custom VJP, or the reference.

Same contract as `reference.attention`. `implementation`: "pallas" (the
kernels; `interpret=True` runs them on CPU), "reference", or None: Pallas on
GPU/TPU, the reference elsewhere. The slot count is padded to a multiple of
`block_k` (a power of two) with empty slots, and the query heads of a kv head
to a multiple of `block_h` (16 by default, the smallest Triton dot) with heads
that have no output; in interpret mode both blocks shrink to the next power of
two of the slots and heads there are.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import triton_params
from pallas_kernels.flash_attention import ops as flash_ops
from pallas_kernels.sparse_attention import kernel, reference

IMPLEMENTATIONS = ("pallas", "reference")
# Triton launch settings (GPU only). On an H100 (d 576, dv 512, bf16) block_k 64 overflowed
# shared memory; block_k 32 at 4 warps without pipelining was the fastest that ran.
COMPILER = dict(num_warps=4, num_stages=1)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  scale: float
  block_k: int
  block_h: int
  interpret: bool

  def kernel_args(self):
    return dict(scale=self.scale, block_k=self.block_k, block_h=self.block_h,
                interpret=self.interpret, compiler_params=triton_params(**COMPILER))  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _sparse(q, k, v, indices, sinks, cfg: KernelConfig):
  """q [b, kh, s, g, d], k/v [b, kh, t, .], sinks [kh, g] ->
  (out [b, kh, s, g, dv], row max [b, kh, s, g])."""
  return _sparse_fwd(q, k, v, indices, sinks, cfg)[0]


def _sparse_fwd(q, k, v, indices, sinks, cfg):
  o, lse, mx = kernel.forward(q, k, v, indices, sinks.astype(jnp.float32), **cfg.kernel_args())
  return (o, mx), (q, k, v, indices, sinks, o, lse)


def _scatter_slots(slots, indices, t):
  """Per-slot grads [b, kh, s, K, d] -> [b, kh, t, d], summed into their key rows."""
  b, kh, s, n, d = slots.shape
  flat = jnp.maximum(indices, 0).reshape(b, s * n)  # empty slots hold zeros; row 0 is harmless
  rows = jnp.moveaxis(slots, 1, 3).reshape(b, s * n, kh, d)
  summed = jax.vmap(lambda r, i: jnp.zeros((t, kh, d), jnp.float32).at[i].add(r))(rows, flat)
  return jnp.moveaxis(summed, 2, 1)


def _sparse_bwd(cfg, res, cotangents):
  q, k, v, indices, sinks, o, lse = res
  do, _ = cotangents  # max logits carry no gradient
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [b, kh, s, g]
  dq, dk_slots, dv_slots = kernel.backward(
    q, k, v, indices, do.astype(q.dtype), lse, delta, **cfg.kernel_args()
  )
  t = k.shape[2]
  dk = _scatter_slots(dk_slots, indices, t).astype(k.dtype)
  dv = _scatter_slots(dv_slots, indices, t).astype(v.dtype)
  # d sink = -sum over queries of p_sink * delta (a sink of NEG has p_sink 0)
  dsinks = -jnp.sum(jnp.exp(sinks.astype(jnp.float32)[None, :, None] - lse) * delta, axis=(0, 2))
  return dq, dk, dv, None, dsinks.astype(sinks.dtype)


_sparse.defvjp(_sparse_fwd, _sparse_bwd)


def sparse_attention(
  q, k, v, indices, *, scale: float, sinks=None, block_k: int = 32, block_h: int = 16,
  chunk: int = 0, implementation=None, interpret: bool = False,
):  # fmt: skip
  """(out [b, s, h, dv], max_logits [h]); see reference.attention. `chunk` bounds
  the reference's gather memory (queries per step)."""
  implementation = implementation or ("pallas" if interpret else flash_ops.default_implementation())
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} must be one of {IMPLEMENTATIONS}")
  if implementation == "reference":
    return reference.attention(q, k, v, indices, scale=scale, sinks=sinks, chunk=chunk)
  b, s, h, d = q.shape
  kh = k.shape[2]
  if h % kh:
    raise ValueError(f"{h} query heads are not a multiple of {kh} kv heads")
  g = h // kh
  slots = indices.shape[-1]
  if interpret:  # no smallest Triton tile on CPU: small cases stay small
    block_k, block_h = min(block_k, next_power_of_2(slots)), min(block_h, next_power_of_2(g))
  indices = jnp.pad(indices.astype(jnp.int32), ((0, 0), (0, 0), (0, -slots % block_k)),
                    constant_values=-1)  # fmt: skip
  heads = ((0, 0), (0, 0), (0, 0), (0, -g % block_h))  # padded heads: no sink, output dropped
  grouped = jnp.moveaxis(q.reshape(b, s, kh, g, d), 2, 1)  # [b, kh, s, g, d]
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # [b, t, kh, .] -> [b, kh, t, .]
  cfg = KernelConfig(float(scale), int(block_k), int(block_h), bool(interpret))
  if sinks is None:
    sinks = jnp.full((h,), kernel.NEG, jnp.float32)
  sinks = jnp.pad(sinks.reshape(kh, g), heads[2:], constant_values=kernel.NEG)
  out, mx = _sparse(
    jnp.pad(grouped, heads + ((0, 0),)), heads_first(k), heads_first(v), indices, sinks, cfg
  )
  out = jnp.moveaxis(out[..., :g, :], 1, 2).reshape(b, s, h, v.shape[-1])
  max_logits = jnp.max(jax.lax.stop_gradient(mx[..., :g]), axis=(0, 2)).reshape(h)
  return out, max_logits


def next_power_of_2(n: int) -> int:
  return 1 << max(0, n - 1).bit_length()
