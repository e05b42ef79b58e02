"""Gemma 3n's block parts: AltUp, LAuReL and the per-layer input gate.

AltUp (Alternating Updates) widens the residual stream to n streams [n, b, s, e]
while each layer runs at width e on one of them (the active stream). Before the
layer, every stream is predicted as a token-dependent mix of all streams; after
it, each stream is corrected by its own multiple of the active stream's
innovation (layer output - its prediction). The mixing coefficients come from a
tiny router: tanh(RMSNorm(x) / e @ W_router), one value per stream.

  predict: p_i = x_i + sum_j C_ij(x_a) x_j      C = (r(x_a) @ W_pred) as [n, n]
  correct: c_i = p_i + (1 + r(y) @ W_corr)_i (y - p_a)

LAuReL (learned augmented residual) is a rank-r bypass beside attention:
x + RMSNorm(x @ L @ R). The per-layer input gate adds, to every stream but the
first, RMSNorm((act(c_a * s @ W_gate) * ple) @ W_proj): the layer's slice of the
per-layer embeddings (PLE), gated by the corrected active stream.

Letters: n streams, b batch, s positions, e embed, r LAuReL rank, p PLE width.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from modeling.layers import params
from modeling.layers.mlp import ACTIVATIONS
from modeling.layers.norms import NormConfig, RMSNorm


@dataclasses.dataclass(frozen=True)
class AltUpConfig:
  """Gemma 3n's block: the residual stream is `num_inputs` streams; each layer runs
  on the active one (AltUp's predict / correct mixes the rest), beside a low-rank
  LAuReL residual, and adds a gated projection of its per-layer embedding (PLE)
  to the inactive streams."""

  embed_dim: int
  norm: NormConfig
  num_inputs: int = 4
  active_idx: int = 0
  coef_clip: float = 120.0  # |prediction / correction coefficients| <= this.
  correct_scale: bool = True  # scale the active corrected stream before the PLE gate.
  laurel_rank: int = 64
  per_layer_dim: int = 256  # width of each layer's per-layer embedding.
  activation: str = "gelu_tanh"  # the per-layer input gate's.
  init_std: float = 0.02


class AltUp(nnx.Module):
  def __init__(self, cfg: AltUpConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.cfg = cfg
    e, n, std = cfg.embed_dim, cfg.num_inputs, cfg.init_std
    self.router_norm = RMSNorm(e, cfg.norm, param_dtype=param_dtype, axis_name="embed")
    self.router = params.normal(rngs, (e, n), ("embed", None), std, param_dtype)
    # [n (router output), n * n (row i, column j: stream i's weight of stream j)]
    self.prediction_coefs = params.normal(rngs, (n, n * n), (None, None), std, param_dtype)
    self.correction_coefs = params.normal(rngs, (n, n), (None, None), std, param_dtype)
    self.correct_output_scale = params.constant(0.0, (e,), ("embed",), param_dtype)

  def _route(self, x):  # [b, s, e] -> [b, s, n] in (-1, 1)
    x = self.router_norm(x) * jnp.asarray(1.0 / self.cfg.embed_dim, x.dtype)
    return jnp.tanh((x @ self.router[...].astype(x.dtype)).astype(jnp.float32)).astype(x.dtype)

  def _coefs(self, param):
    clip = self.cfg.coef_clip
    return jnp.clip(param[...], -clip, clip) if clip > 0 else param[...]

  def predict(self, streams):
    """streams [n, b, s, e] -> predictions [n, b, s, e]."""
    n, dt = self.cfg.num_inputs, streams.dtype
    route = self._route(streams[self.cfg.active_idx])
    coefs = route @ self._coefs(self.prediction_coefs).astype(dt)  # [b, s, n * n]
    coefs = coefs.reshape(route.shape[:2] + (n, n))
    return streams + jnp.einsum("bsij,jbse->ibse", coefs, streams)

  def correct(self, predictions, activated):
    """predictions [n, b, s, e], the layer's output for the active stream [b, s, e]
    -> corrected streams [n, b, s, e]."""
    dt = activated.dtype
    coefs = self._route(activated) @ self._coefs(self.correction_coefs).astype(dt) + 1.0
    innovation = activated - predictions[self.cfg.active_idx]
    return predictions + jnp.moveaxis(coefs, -1, 0)[..., None] * innovation[None]

  def scale_output(self, x):  # the corrected active stream, times a learned scale
    return x * self.correct_output_scale[...].astype(x.dtype)


class Laurel(nnx.Module):
  """x + RMSNorm(x @ L @ R), L [e, r], R [r, e]."""

  def __init__(self, cfg: AltUpConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    e, r, std = cfg.embed_dim, cfg.laurel_rank, cfg.init_std
    self.left = params.normal(rngs, (e, r), ("embed", None), std, param_dtype)
    self.right = params.normal(rngs, (r, e), (None, "embed"), std, param_dtype)
    self.norm = RMSNorm(e, cfg.norm, param_dtype=param_dtype, axis_name="embed")

  def __call__(self, x):
    dt = x.dtype
    return x + self.norm(x @ self.left[...].astype(dt) @ self.right[...].astype(dt))


class PerLayerGate(nnx.Module):
  """RMSNorm((act(x @ W_gate) * per_layer_input) @ W_proj): x [b, s, e], the
  layer's per-layer embedding [b, s, p] -> [b, s, e]."""

  def __init__(self, cfg: AltUpConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.cfg = cfg
    e, p, std = cfg.embed_dim, cfg.per_layer_dim, cfg.init_std
    self.gate = params.normal(rngs, (e, p), ("embed", None), std, param_dtype)
    self.proj = params.normal(rngs, (p, e), (None, "embed"), std, param_dtype)
    self.norm = RMSNorm(e, cfg.norm, param_dtype=param_dtype, axis_name="embed")

  def __call__(self, x, per_layer_input):
    dt = x.dtype
    h = ACTIVATIONS[self.cfg.activation](x @ self.gate[...].astype(dt)) * per_layer_input
    return self.norm(h @ self.proj[...].astype(dt))


def match_magnitude(x, target):
  """x rescaled to the root-mean-square of `target` per token (over e; RMS floored at
  sqrt(1e-5) as the reference does)."""
  rms = lambda a: jnp.sqrt(jnp.mean(jnp.square(a), axis=-1, keepdims=True))
  return x * rms(target) / jnp.sqrt(jnp.maximum(jnp.mean(jnp.square(x), -1, keepdims=True), 1e-5))
