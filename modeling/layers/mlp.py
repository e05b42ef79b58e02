"""Gated MLP: down(act(x @ gate) * (x @ up)); SwiGLU (silu) or GeGLU (gelu_tanh),
optionally with Gemma 3n's activation sparsity on the gate."""

import dataclasses

import jax
import jax.numpy as jnp
import jax.scipy.stats
from flax import nnx

from modeling.layers import params
from modeling.layers.fp8 import Fp8, project

ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}


@dataclasses.dataclass(frozen=True)
class MlpConfig:
  embed_dim: int
  mlp_dim: int
  activation: str = "silu"  # a key of ACTIVATIONS
  bias: bool = False
  init_std: float = 0.02
  fp8: Fp8 | None = None
  # Gemma 3n: keep only the gate pre-activations above mean + std * Phi^-1(sparsity)
  # of each token (a Gaussian estimate of its top (1 - sparsity)), shifted to 0.
  activation_sparsity: float = 0.0


class GatedMLP(nnx.Module):
  def __init__(self, cfg: MlpConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.cfg = cfg
    d, f, std = cfg.embed_dim, cfg.mlp_dim, cfg.init_std
    self.gate_proj = params.normal(rngs, (d, f), ("embed", "mlp"), std, param_dtype)
    self.up_proj = params.normal(rngs, (d, f), ("embed", "mlp"), std, param_dtype)
    self.down_proj = params.normal(rngs, (f, d), ("mlp", "embed"), std, param_dtype)
    if cfg.bias:
      self.gate_bias = params.constant(0.0, (f,), ("mlp",), param_dtype)
      self.up_bias = params.constant(0.0, (f,), ("mlp",), param_dtype)
      self.down_bias = params.constant(0.0, (d,), ("embed",), param_dtype)

  def __call__(self, x, ctx=None):
    """x: [b, s, d] -> [b, s, d]. With ctx.inputs["mlp_width"] (an int, or traced):
    run as the MatFormer sub-MLP of the first that many hidden units, the rest
    masked out."""
    width = None if ctx is None else ctx.inputs.get("mlp_width")
    dt, fp8 = x.dtype, self.cfg.fp8
    gate, up = project(x, self.gate_proj[...], fp8), project(x, self.up_proj[...], fp8)
    if self.cfg.bias:
      gate, up = gate + self.gate_bias[...].astype(dt), up + self.up_bias[...].astype(dt)
    keep = None if width is None else jnp.arange(self.cfg.mlp_dim) < width
    if self.cfg.activation_sparsity > 0:
      gate = gaussian_top_k(gate, self.cfg.activation_sparsity, keep)
    hidden = ACTIVATIONS[self.cfg.activation](gate) * up
    if keep is not None:
      hidden = jnp.where(keep, hidden, 0.0)
    out = project(hidden, self.down_proj[...], fp8)
    if self.cfg.bias:
      out = out + self.down_bias[...].astype(dt)
    return out


def gaussian_top_k(x, sparsity: float, keep=None):
  """relu(x - (mean + std * Phi^-1(sparsity))) over the last axis: if x were normal,
  the top (1 - sparsity) of it, shifted down to 0 (Gemma 3n's sparse gate). `keep`
  [x.shape[-1]] bool: the statistics over those entries only (a MatFormer slice)."""
  multiplier = jax.scipy.stats.norm.ppf(jnp.float32(sparsity)).astype(x.dtype)
  mean = jnp.mean(x, axis=-1, keepdims=True, where=keep)
  std = jnp.std(x, axis=-1, keepdims=True, where=keep)  # population std, as the reference
  return jax.nn.relu(x - (mean + std * multiplier))
