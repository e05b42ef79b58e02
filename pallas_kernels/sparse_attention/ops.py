"""`sparse_attention`: the Pallas kernels behind a custom VJP, or the reference.

Same contract as `reference.attention`. `implementation`: "pallas" (the
kernels; `interpret=True` runs them on CPU), "reference", or None: Pallas on
GPU/TPU, the reference elsewhere. The slot count is padded to a multiple of
`block_k` with empty slots.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.flash_attention.ops import default_implementation
from pallas_kernels.sparse_attention import kernel, reference

IMPLEMENTATIONS = ("pallas", "reference")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  scale: float
  block_k: int
  interpret: bool


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _sparse(q, k, v, indices, sinks, cfg: KernelConfig):
  """q [b, kh, s, g, d], k/v [b, kh, t, .], sinks [kh, g] ->
  (out [b, kh, s, g, dv], row max [b, kh, s, g])."""
  return _sparse_fwd(q, k, v, indices, sinks, cfg)[0]


def _sparse_fwd(q, k, v, indices, sinks, cfg):
  o, lse, mx = kernel.forward(
    q, k, v, indices, sinks.astype(jnp.float32), scale=cfg.scale, block_k=cfg.block_k,
    interpret=cfg.interpret,
  )  # fmt: skip
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
    q, k, v, indices, do.astype(q.dtype), lse, delta, scale=cfg.scale, block_k=cfg.block_k,
    interpret=cfg.interpret,
  )  # fmt: skip
  t = k.shape[2]
  dk = _scatter_slots(dk_slots, indices, t).astype(k.dtype)
  dv = _scatter_slots(dv_slots, indices, t).astype(v.dtype)
  # d sink = -sum over queries of p_sink * delta (a sink of NEG has p_sink 0)
  dsinks = -jnp.sum(jnp.exp(sinks.astype(jnp.float32)[None, :, None] - lse) * delta, axis=(0, 2))
  return dq, dk, dv, None, dsinks.astype(sinks.dtype)


_sparse.defvjp(_sparse_fwd, _sparse_bwd)


def sparse_attention(
  q, k, v, indices, *, scale: float, sinks=None, block_k: int = 64, chunk: int = 0,
  implementation=None, interpret: bool = False,
):  # fmt: skip
  """(out [b, s, h, dv], max_logits [h]); see reference.attention. `chunk` bounds
  the reference's gather memory (queries per step)."""
  implementation = implementation or ("pallas" if interpret else default_implementation())
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} must be one of {IMPLEMENTATIONS}")
  if implementation == "reference":
    return reference.attention(q, k, v, indices, scale=scale, sinks=sinks, chunk=chunk)
  b, s, h, d = q.shape
  kh = k.shape[2]
  if h % kh:
    raise ValueError(f"{h} query heads are not a multiple of {kh} kv heads")
  slots = indices.shape[-1]
  block_k = min(block_k, slots)
  indices = jnp.pad(indices.astype(jnp.int32), ((0, 0), (0, 0), (0, -slots % block_k)),
                    constant_values=-1)  # fmt: skip
  grouped = jnp.moveaxis(q.reshape(b, s, kh, h // kh, d), 2, 1)  # [b, kh, s, g, d]
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # [b, t, kh, .] -> [b, kh, t, .]
  cfg = KernelConfig(float(scale), int(block_k), bool(interpret))
  if sinks is None:
    sinks = jnp.full((h,), kernel.NEG, jnp.float32)
  out, mx = _sparse(
    grouped, heads_first(k), heads_first(v), indices, sinks.reshape(kh, h // kh), cfg
  )
  out = jnp.moveaxis(out, 1, 2).reshape(b, s, h, v.shape[-1])
  max_logits = jnp.max(jax.lax.stop_gradient(mx), axis=(0, 2)).reshape(h)
  return out, max_logits
