"""Rotary position embeddings: default, linear, Llama-3 and YaRN frequency
schedules, partial rotary (only the leading `rotary_dim` dims of a head turn).

Layout is half-split (rotate_half): pairs are (i, i + rotary_dim/2), as in most
Hugging Face checkpoints; `interleave` rotates pairs (2i, 2i+1) instead (Meta's
complex-number form: Llama 4, DeepSeek's MLA).
"""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

ROPE_SCALINGS = ("none", "linear", "llama3", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  theta: float = 10_000.0
  rotary_dim: int = 0  # leading dims of each head that rotate (partial rotary).
  scaling: str = "none"  # none | linear | llama3 | yarn
  factor: float = 1.0
  original_max_position: int = 8192
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  attention_factor: float = 0.0
  truncate: bool = True  # yarn: floor/ceil the correction range.
  interleave: bool = False  # rotate pairs (2i, 2i+1) instead of (i, i + rotary_dim/2).


def _llama3(inv_freq, c: RopeConfig):
  wavelen = 2 * math.pi / inv_freq
  low_wavelen = c.original_max_position / c.low_freq_factor
  high_wavelen = c.original_max_position / c.high_freq_factor
  scaled = np.where(wavelen > low_wavelen, inv_freq / c.factor, inv_freq)
  smooth = (c.original_max_position / wavelen - c.low_freq_factor) / (
    c.high_freq_factor - c.low_freq_factor
  )
  smoothed = (1 - smooth) * scaled / c.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled)


def _yarn(c: RopeConfig):
  """YaRN: interpolate low frequencies by `factor`, keep high ones, ramp between."""
  dim = c.rotary_dim
  exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
  extrapolation = 1.0 / c.theta**exponents
  interpolation = extrapolation / c.factor

  def correction_dim(rotations):
    return (
      dim * math.log(c.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(c.theta))
    )

  low, high = correction_dim(c.beta_fast), correction_dim(c.beta_slow)
  if c.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
  keep = 1 - ramp  # 1 -> extrapolate (high frequency), 0 -> interpolate.
  inv_freq = interpolation * (1 - keep) + extrapolation * keep
  attention_factor = c.attention_factor or (0.1 * math.log(c.factor) + 1.0 if c.factor > 1 else 1.0)
  return inv_freq, attention_factor


def frequencies(c: RopeConfig) -> tuple[np.ndarray, float]:
  """(inv_freq [rotary_dim/2], attention_factor that multiplies cos and sin)."""
  if c.scaling == "yarn":
    return _yarn(c)
  inv_freq = 1.0 / c.theta ** (np.arange(0, c.rotary_dim, 2, dtype=np.float64) / c.rotary_dim)
  if c.scaling == "linear":
    inv_freq = inv_freq / c.factor
  elif c.scaling == "llama3":
    inv_freq = _llama3(inv_freq, c)
  return inv_freq, 1.0


def apply(x, positions, c: RopeConfig):
  """x: [batch, seq, heads, head_dim]; positions: [batch, seq] int."""
  inv_freq, attention_factor = frequencies(c)
  inv_freq = jnp.asarray(inv_freq, jnp.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, s, rotary_dim/2]
  cos = (jnp.cos(angles) * attention_factor)[:, :, None, :]
  sin = (jnp.sin(angles) * attention_factor)[:, :, None, :]
  rot, rest = x[..., : c.rotary_dim].astype(jnp.float32), x[..., c.rotary_dim :]
  if c.interleave:
    x1, x2 = rot[..., 0::2], rot[..., 1::2]
    pairs = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    rotated = pairs.reshape(rot.shape).astype(x.dtype)
  else:
    x1, x2 = jnp.split(rot, 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
  return jnp.concatenate([rotated, rest], axis=-1) if rest.shape[-1] else rotated
