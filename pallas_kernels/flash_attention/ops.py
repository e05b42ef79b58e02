"""`flash_attention`: the Pallas kernels behind a custom VJP, or the reference.

Same contract as `reference.attention` (q [b, s, h, d], k [b, s, kh, d], v [b, s,
kh, dv], segment ids >= 0, causal, optional window, soft-cap and sinks; returns
(out [b, s, h, dv], max_logits [h])). `implementation`: "pallas" (the kernels;
`interpret=True` runs them on CPU), "reference", or None: Pallas on GPU/TPU,
the reference elsewhere. Sequences are padded to a multiple of the blocks.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import triton_params
from pallas_kernels.flash_attention import kernel, reference

IMPLEMENTATIONS = ("pallas", "reference")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  scale: float
  softcap: float
  window: int
  block_q: int
  block_k: int
  interpret: bool
  has_sinks: bool
  value_dim: int = 0  # > 0: no v; the values are the keys' first value_dim columns
  num_warps: int | None = None  # Triton launch settings (GPU only; None: 4 warps, 3 stages)
  num_stages: int | None = None
  dkv_heads: int = 0  # query heads per dk/dv program (0: all of a kv head's)

  def kernel_args(self):
    return dict(
      scale=self.scale, softcap=self.softcap, window=self.window, block_q=self.block_q,
      block_k=self.block_k, interpret=self.interpret, value_dim=self.value_dim,
      compiler_params=triton_params(num_warps=self.num_warps, num_stages=self.num_stages),
    )  # fmt: skip


def _heads_first(x):  # [b, s, n, d] -> [b, n, s, d]
  return jnp.swapaxes(x, 1, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _flash(q, k, v, q_seg, k_seg, sinks, cfg: KernelConfig):
  """-> (out [b, h, S, dv], raw-logit row max [b, h, S])."""
  return _flash_fwd(q, k, v, q_seg, k_seg, sinks, cfg)[0]


def _flash_fwd(q, k, v, q_seg, k_seg, sinks, cfg):
  o, lse, mx = kernel.forward(
    q, k, v, q_seg, k_seg, sinks if cfg.has_sinks else None, **cfg.kernel_args()
  )
  return (o, mx), (q, k, v, q_seg, k_seg, sinks, o, lse)


def _flash_bwd(cfg, res, cotangents):
  q, k, v, q_seg, k_seg, sinks, o, lse = res
  do, _ = cotangents  # max logits carry no gradient
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [b, h, S]
  dq, dk, dv = kernel.backward(
    q, k, v, q_seg, k_seg, do, lse, delta, dkv_heads=cfg.dkv_heads, **cfg.kernel_args()
  )
  dsinks = None
  if cfg.has_sinks:  # d sink = -sum_q p_sink(q) * delta(q); padding rows have delta 0
    p_sink = jnp.exp(sinks.astype(jnp.float32)[None, :, None] - lse)
    dsinks = (-jnp.sum(p_sink * delta, axis=(0, 2))).astype(sinks.dtype)
  return dq, dk, dv, None, None, dsinks  # dv is None when v is (shared K/V)


_flash.defvjp(_flash_fwd, _flash_bwd)


def pad_and_run(q, k, v, segment_ids, sinks, cfg: KernelConfig):
  """Model layouts ([b, s, n, d]) padded to the blocks -> _flash -> (out, max_logits)."""
  s = q.shape[1]
  pad = -s % max(cfg.block_q, cfg.block_k)
  seg = jnp.asarray(segment_ids, jnp.int32)
  q_seg = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-2)  # padding sees nothing ...
  k_seg = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-1)  # ... and is seen by nobody
  padded = lambda x: _heads_first(jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))))
  sinks = jnp.zeros((q.shape[2],), jnp.float32) if sinks is None else sinks
  v = None if v is None else padded(v)
  out, mx = _flash(padded(q), padded(k), v, q_seg, k_seg, sinks, cfg)
  max_logits = jnp.max(jax.lax.stop_gradient(mx[:, :, :s]), axis=(0, 2))
  return _heads_first(out)[:, :s], max_logits


def default_implementation() -> str:
  return "pallas" if jax.default_backend() in ("gpu", "tpu") else "reference"


def flash_attention(
  q, k, v, *, segment_ids, scale: float, window: int = 0, softcap: float = 0.0, sinks=None,
  block_q: int = 64, block_k: int = 64, dkv_heads: int = 0, implementation=None,
  interpret: bool = False,
):  # fmt: skip
  """(out [b, s, h, dv], max_logits [h]); see the module docstring. `dkv_heads`: query
  heads per dk/dv program (0: all that share a kv head)."""
  implementation = implementation or ("pallas" if interpret else default_implementation())
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} must be one of {IMPLEMENTATIONS}")
  if implementation == "reference":
    kw = dict(segment_ids=segment_ids, scale=scale, window=window, softcap=softcap, sinks=sinks)
    return reference.attention(q, k, v, **kw)
  h = q.shape[2]
  if h % k.shape[2]:
    raise ValueError(f"{h} query heads are not a multiple of {k.shape[2]} kv heads")
  cfg = KernelConfig(
    float(scale), float(softcap), int(window), block_q, block_k, bool(interpret),
    sinks is not None, dkv_heads=int(dkv_heads),
  )  # fmt: skip
  return pad_and_run(q, k, v, segment_ids, sinks, cfg)
