"""Mixture-of-experts MLP: router + routed experts + optional (gated) shared expert.

y = c · (Σ_k w_k · FFN_{i_k}(x) + [σ(x · g)] · Shared(x)), c = output_scale.
The shared expert sees every token, whatever the router picks. Letters: b batch,
s seq, e embed, x experts (E).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.layers import params
from modeling.layers.mlp import GatedMLP, MlpConfig
from modeling.moe.config import MoeConfig, validate
from modeling.moe.experts import Experts
from modeling.moe.router import Router


class MoE(nnx.Module):
  def __init__(self, cfg: MoeConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    validate(cfg)
    self.cfg = cfg
    e = cfg.embed_dim
    self.router = Router(cfg, rngs=rngs, param_dtype=param_dtype)
    self.experts = Experts(cfg, rngs=rngs, param_dtype=param_dtype)
    if cfg.shared_mlp_dim > 0:
      shared = MlpConfig(
        e, cfg.shared_mlp_dim, activation=cfg.activation, init_std=cfg.init_std, fp8=cfg.fp8
      )
      self.shared = GatedMLP(shared, rngs=rngs, param_dtype=param_dtype)
    if cfg.shared_gate:
      self.shared_gate = params.normal(rngs, (e, 1), ("embed", None), cfg.init_std, param_dtype)

  def __call__(self, x, ctx=None):
    """x: [b, s, e] -> (y [b, s, e], stats); ctx is unused (every FFN takes one).

    stats: load [E] (token-slot counts), seq_aux,
    switch_aux, router_z, dropped_frac (scalars, float32; unscaled by any coefficient).
    """
    del ctx
    b, s, e = x.shape
    tokens = x.reshape(b * s, e)  # [t, e]
    weights, indices, stats = self.router(tokens, batch_shape=(b, s))  # [t, k] x2
    y, dropped = self.experts(tokens, weights, indices)  # [t, e]
    if self.cfg.shared_mlp_dim > 0:
      shared = self.shared(tokens)
      if self.cfg.shared_gate:
        shared = shared * jax.nn.sigmoid(tokens @ self.shared_gate[...].astype(x.dtype))
      y = y + shared
    if self.cfg.output_scale != 1.0:
      y = y * jnp.asarray(self.cfg.output_scale, y.dtype)
    return y.reshape(b, s, e), dict(stats, dropped_frac=dropped)
