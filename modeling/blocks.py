"""The generic decoder block: attention + FFN with pre, post (OLMo 2), sandwich
(Gemma 3) or deepnorm (MiniMax-01) norms, and residual scales on each sum.

A block is `block(x, ctx) -> (x, stats)`: `ctx` (modeling/context.py) carries
positions, documents and anything a layer kind needs beyond them, and the block
hands it to its sublayers unread. `stats` is {"attn": ..., "mlp": ...}: what each
sublayer reports (max logits, expert loads, balance terms, an indexer's KL, and
under "shared" what it leaves for later layers), keyed by the sublayer so the
decoder can name every entry by its module path.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from modeling.attention.dot_product import AttentionConfig
from modeling.attention.factory import attention_layer
from modeling.attention.linear import DeltaNetConfig
from modeling.attention.mla import MlaConfig
from modeling.layers.mlp import GatedMLP, MlpConfig
from modeling.layers.norms import NormConfig, RMSNorm
from modeling.moe.config import MoeConfig
from modeling.moe.layer import MoE
from parallelism import rules

# Activations [b, s, e] between blocks: rows split like the batch, the rest whole.
ACTIVATION_AXES = ("batch", "length", None)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  attention: AttentionConfig | MlaConfig | DeltaNetConfig
  mlp: MlpConfig | MoeConfig
  norm: NormConfig
  placement: str = "pre"
  # x <- alpha * x + beta * sublayer(...): (attention alpha, beta, MLP alpha, beta).
  residual: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
  stream: Any = None  # the stream kind's per-block config (modeling/streams.py), or None


def ffn_layer(cfg, *, rngs: nnx.Rngs, param_dtype=jnp.float32) -> nnx.Module:
  """The FFN module for `cfg`: a dense gated MLP or an MoE layer."""
  return (MoE if isinstance(cfg, MoeConfig) else GatedMLP)(cfg, rngs=rngs, param_dtype=param_dtype)


def run_ffn(mlp, x, ctx) -> tuple:
  """(y, stats) of either FFN kind (a dense MLP reports nothing)."""
  out = mlp(x, ctx)
  return out if isinstance(mlp, MoE) else (out, {})


def residual(x, h, alpha: float, beta: float):
  """alpha * x + beta * h; the plain sum (no multiplies in the graph) at 1, 1."""
  if alpha != 1.0:
    x = x * jnp.asarray(alpha, x.dtype)
  if beta != 1.0:
    h = h * jnp.asarray(beta, h.dtype)
  return x + h


class Block(nnx.Module):
  def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.placement = spec.placement
    self.residual = spec.residual
    d = spec.attention.embed_dim
    norm = lambda: RMSNorm(d, spec.norm, param_dtype=param_dtype, axis_name="embed")
    self.attn = attention_layer(spec.attention, rngs=rngs, param_dtype=param_dtype)
    self.mlp = ffn_layer(spec.mlp, rngs=rngs, param_dtype=param_dtype)
    if spec.placement in ("pre", "sandwich", "deepnorm"):
      self.attn_norm, self.mlp_norm = norm(), norm()
    if spec.placement in ("post", "sandwich"):
      self.attn_post_norm, self.mlp_post_norm = norm(), norm()

  def __call__(self, x, ctx):
    """x: [b, s, e] -> (x, {"attn": stats, "mlp": stats})."""
    pre = self.placement in ("pre", "sandwich")
    post = self.placement in ("post", "sandwich")
    deep = self.placement == "deepnorm"  # the residual carries the normed stream
    attn_alpha, attn_beta, mlp_alpha, mlp_beta = self.residual
    if deep:
      x = self.attn_norm(x)
    h, attn_stats = self.attn(self.attn_norm(x) if pre else x, ctx)
    h = checkpoint_name(h, "attention_out")
    x = residual(x, self.attn_post_norm(h) if post else h, attn_alpha, attn_beta)
    if deep:
      x = self.mlp_norm(x)
    h, mlp_stats = run_ffn(self.mlp, self.mlp_norm(x) if pre else x, ctx)
    x = residual(x, self.mlp_post_norm(h) if post else h, mlp_alpha, mlp_beta)
    return rules.constrain(x, ACTIVATION_AXES), {"attn": attn_stats, "mlp": mlp_stats}
