"""RMSNorm in its two parametrisations, and LayerNorm; statistics in float32."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.layers import params

NORMS = ("rms", "rms_one_plus")


@dataclasses.dataclass(frozen=True)
class NormConfig:
  kind: str = "rms"  # rms | rms_one_plus
  eps: float = 1e-6


class RMSNorm(nnx.Module):
  """x / rms(x) * w (`rms`), or * (1 + w) with w stored zero-centred (`rms_one_plus`).

  `rms` casts the normalised x back to the input dtype before the scale (Llama);
  `rms_one_plus` scales in float32 and casts after (Gemma), matching each
  reference bit for bit in float32 and to rounding in bfloat16.
  """

  def __init__(self, dim: int, cfg: NormConfig, *, param_dtype=jnp.float32, axis_name="norm"):
    self.cfg = cfg
    init = 0.0 if cfg.kind == "rms_one_plus" else 1.0
    self.scale = params.constant(init, (dim,), (axis_name,), param_dtype)

  def __call__(self, x):
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    normed = x32 * jnp.reciprocal(
      jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.eps)
    )
    w = self.scale[...].astype(jnp.float32)
    if self.cfg.kind == "rms_one_plus":
      return (normed * (1.0 + w)).astype(dtype)
    return normed.astype(dtype) * w.astype(dtype)


class LayerNorm(nnx.Module):
  """(x - mean) / std * scale + bias over the last axis, in float32 (torch.nn.LayerNorm)."""

  def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32, axis_name="norm"):
    self.eps = eps
    self.scale = params.constant(1.0, (dim,), (axis_name,), param_dtype)
    self.bias = params.constant(0.0, (dim,), (axis_name,), param_dtype)

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    out = normed * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return out.astype(x.dtype)
