"""One generic decoder, assembled from per-layer `BlockSpec`s.

Layers repeat with a period (Gemma 3: 5 local + 1 global = 6); the first
`num_layers // period` periods are stacked along a leading `layers` axis and
run under `nnx.scan`, so compile time does not grow with depth. The
`num_layers % period` left-over layers run unrolled after them.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.attention.dot_product import Attention
from modeling.config import BlockSpec, DecoderConfig
from modeling.layers import params
from modeling.layers.mlp import GatedMLP
from modeling.layers.norms import RMSNorm


class Block(nnx.Module):
  """Attention + MLP with pre, post (OLMo 2) or sandwich (Gemma 3) norms."""

  def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.placement = spec.placement
    d = spec.attention.embed_dim
    norm = lambda: RMSNorm(d, spec.norm, param_dtype=param_dtype, axis_name="embed")
    self.attn = Attention(spec.attention, rngs=rngs, param_dtype=param_dtype)
    self.mlp = GatedMLP(spec.mlp, rngs=rngs, param_dtype=param_dtype)
    if spec.placement in ("pre", "sandwich"):
      self.attn_norm, self.mlp_norm = norm(), norm()
    if spec.placement in ("post", "sandwich"):
      self.attn_post_norm, self.mlp_post_norm = norm(), norm()

  def __call__(self, x, *, positions, segment_ids):  # x: [b, s, e]
    pre = self.placement in ("pre", "sandwich")
    post = self.placement in ("post", "sandwich")
    h = self.attn(self.attn_norm(x) if pre else x, positions=positions, segment_ids=segment_ids)
    x = x + (self.attn_post_norm(h) if post else h)
    h = self.mlp(self.mlp_norm(x) if pre else x)
    return x + (self.mlp_post_norm(h) if post else h)


class Period(nnx.Module):
  """One repetition of the layer pattern: `period` consecutive blocks."""

  def __init__(self, specs: tuple[BlockSpec, ...], *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.blocks = nnx.List([Block(s, rngs=rngs, param_dtype=param_dtype) for s in specs])

  def __call__(self, x, positions, segment_ids):
    for block in self.blocks:
      x = block(x, positions=positions, segment_ids=segment_ids)
    return x


def _add_layers_axis(module: nnx.Module):
  for _, variable in nnx.iter_graph(module):
    if isinstance(variable, nnx.Param):
      variable.set_metadata("axes", ("layers",) + params.logical_axes(variable))


class Decoder(nnx.Module):
  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt, std, v, e = cfg.param_dtype, cfg.init_std, cfg.vocab_size, cfg.embed_dim
    self.embed = params.normal(rngs, (v, e), ("vocab", "embed"), std, dt)
    period_specs = cfg.blocks[: cfg.period]
    self.num_periods = cfg.num_layers // cfg.period if cfg.scan_layers else 0
    if self.num_periods:

      @nnx.split_rngs(splits=self.num_periods)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make_stack(rngs):
        return Period(period_specs, rngs=rngs, param_dtype=dt)

      self.stack = make_stack(rngs)
      _add_layers_axis(self.stack)
    tail = cfg.blocks[self.num_periods * cfg.period :]
    self.tail = nnx.List([Block(s, rngs=rngs, param_dtype=dt) for s in tail])
    self.final_norm = RMSNorm(e, cfg.norm, param_dtype=dt, axis_name="embed")
    if not cfg.tie_embeddings:
      self.lm_head = params.normal(rngs, (e, v), ("embed", "vocab"), std, dt)

  def __call__(self, tokens, *, positions=None, segment_ids=None):
    """tokens: [b, s] int -> logits [b, s, vocab] float32."""
    cfg = self.cfg
    b, s = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(s), (b, s))
    if segment_ids is None:
      segment_ids = jnp.ones((b, s), jnp.int32)
    x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.compute_dtype)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.embed_dim**0.5, cfg.compute_dtype)
    if self.num_periods:
      x = self._scan(x, positions, segment_ids)
    for block in self.tail:
      x = block(x, positions=positions, segment_ids=segment_ids)
    x = self.final_norm(x)
    head = self.embed[...].T if cfg.tie_embeddings else self.lm_head[...]
    logits = jnp.einsum(
      "bse,ev->bsv", x, head.astype(cfg.compute_dtype), preferred_element_type=jnp.float32
    )
    if cfg.final_softcap > 0:
      logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
    return logits

  def _scan(self, x, positions, segment_ids):
    def body(period, x):
      return period(x, positions, segment_ids)

    if self.cfg.remat == "full":
      body = nnx.remat(body)

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def run(period, x):
      return body(period, x)

    return run(self.stack, x)


def cross_entropy(logits, targets, weights, z_loss: float = 0.0):
  """Mean next-token CE over weighted positions (+ z_loss * log(Z)^2).

  logits: [b, s, v] float32; targets: [b, s] int; weights: [b, s] float.
  Returns (loss, {"ce": ..., "z": ...}).
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  denom = jnp.maximum(weights.sum(), 1.0)
  ce = ((log_z - target_logit) * weights).sum() / denom
  z = (jnp.square(log_z) * weights).sum() / denom
  return ce + z_loss * z, {"ce": ce, "z": z}
