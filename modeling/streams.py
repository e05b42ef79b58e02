"""Residual-stream kinds: what the decoder carries from block to block.

A stream kind owns everything a family needs around its blocks: how the
embedding enters the residual (`enter`, which also returns per-layer inputs
with a leading layers axis: the decoder gives each layer its slice through
ctx.inputs), how the residual leaves it for the final norm (`exit`), and which
block class runs on it (`block`). The generic decoder and block know none of it:
a new exotic family is a new kind here.

- `Plain`: one stream x [b, s, e] and the generic `Block`.
- `AltUpStreams` (Gemma 3n): n AltUp streams [n, b, s, e] and per-layer
  embeddings (PLE), run by `AltUpBlock` (modeling/layers/altup.py's parts).

Letters: n streams, b batch, s positions, e embed, L layers, p PLE width.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from modeling.attention.factory import attention_layer
from modeling.blocks import ACTIVATION_AXES, Block, BlockSpec, ffn_layer, run_ffn
from modeling.layers import altup, params
from modeling.layers.norms import NormConfig, RMSNorm
from parallelism import rules


class Plain(nnx.Module):
  """The residual is one stream x [b, s, e]."""

  block = Block

  def __init__(self, cfg=None, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    del cfg, rngs, param_dtype

  def enter(self, tokens, x):
    del tokens
    return x, {}

  def exit(self, x):
    return x


@dataclasses.dataclass(frozen=True)
class AltUpStreamConfig:
  """Gemma 3n's residual: `num_inputs` AltUp streams, and per-layer embeddings: a
  [per_layer_vocab, num_layers * per_layer_dim] table plus a projection of the
  token embedding, one per_layer_dim-wide slice per layer."""

  embed_dim: int
  num_layers: int
  num_inputs: int
  per_layer_vocab: int
  per_layer_dim: int
  norm: NormConfig
  on_host: bool = False  # the PLE table (and its optimizer state) in pinned host memory
  init_std: float = 0.02


class AltUpBlock(nnx.Module):
  """Gemma 3n's layer on AltUp streams [n, b, s, e]: predict the streams; on the
  active one, sandwich-normed attention beside a LAuReL bypass (their sum /
  sqrt 2), then the sandwich-normed MLP; correct every stream from the result;
  add the gated per-layer embedding (ctx.inputs["per_layer_input"] [b, s, p]) to
  the streams after the first."""

  def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    cfg = spec.stream  # AltUpConfig
    self.cfg = cfg
    d = spec.attention.embed_dim
    norm = lambda: RMSNorm(d, spec.norm, param_dtype=param_dtype, axis_name="embed")
    self.attn = attention_layer(spec.attention, rngs=rngs, param_dtype=param_dtype)
    self.mlp = ffn_layer(spec.mlp, rngs=rngs, param_dtype=param_dtype)
    self.attn_norm, self.attn_post_norm = norm(), norm()
    self.mlp_norm, self.mlp_post_norm = norm(), norm()
    self.altup = altup.AltUp(cfg, rngs=rngs, param_dtype=param_dtype)
    self.laurel = altup.Laurel(cfg, rngs=rngs, param_dtype=param_dtype)
    self.per_layer = altup.PerLayerGate(cfg, rngs=rngs, param_dtype=param_dtype)

  def __call__(self, streams, ctx):
    """streams [n, b, s, e] -> (streams, {"attn": stats, "mlp": stats})."""
    cfg = self.cfg
    predictions = self.altup.predict(streams)
    active = predictions[cfg.active_idx]
    normed = self.attn_norm(active)
    h, attn_stats = self.attn(normed, ctx)
    h = checkpoint_name(h, "attention_out")
    x = (active + self.attn_post_norm(h) + self.laurel(normed)) * jnp.asarray(2**-0.5, h.dtype)
    h, mlp_stats = run_ffn(self.mlp, self.mlp_norm(x), ctx)
    x = x + self.mlp_post_norm(h)
    corrected = self.altup.correct(predictions, x)
    first = corrected[cfg.active_idx]
    if cfg.correct_scale:
      first = self.altup.scale_output(first)
    gated = self.per_layer(first, ctx.inputs["per_layer_input"])
    corrected = corrected.at[1:].add(gated[None])
    stats = {"attn": attn_stats, "mlp": mlp_stats}
    return rules.constrain(corrected, (None,) + ACTIVATION_AXES), stats


class AltUpStreams(nnx.Module):
  """The per-layer embedding table and projection, and AltUp's projections of the
  embedding into streams 1..n-1 and back out."""

  block = AltUpBlock

  def __init__(self, cfg: AltUpStreamConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.cfg = cfg
    n, L, p, e, std = cfg.num_inputs, cfg.num_layers, cfg.per_layer_dim, cfg.embed_dim, cfg.init_std
    table = (cfg.per_layer_vocab, L * p)
    self.per_layer_embed = params.normal(rngs, table, ("vocab", None), std, param_dtype)
    if cfg.on_host:  # the trainer lays it (and its optimizer state) out in host memory
      self.per_layer_embed.set_metadata("memory_kind", "pinned_host")
    self.per_layer_proj = params.normal(rngs, (e, L * p), ("embed", None), std, param_dtype)
    self.per_layer_norm = RMSNorm(p, cfg.norm, param_dtype=param_dtype, axis_name="norm")
    self.altup_in = params.normal(rngs, (n - 1, e, e), ("streams", "embed", None), std, param_dtype)
    self.altup_out = params.normal(
      rngs, (n - 1, e, e), ("streams", "embed", None), std, param_dtype
    )

  def enter(self, tokens, x):
    """x [b, s, e] -> (streams [n, b, s, e]: x, then projections of x rescaled to its
    per-token RMS; {"per_layer_input": [L, b, s, p]})."""
    per_layer = self._per_layer_inputs(tokens, x)
    extra = [altup.match_magnitude(x @ w.astype(x.dtype), x) for w in self.altup_in[...]]
    return jnp.stack([x] + extra), {"per_layer_input": per_layer}

  def exit(self, streams):
    """[n, b, s, e] -> [b, s, e]: stream 0 and the others' projections back (rescaled
    to stream 0's RMS), averaged."""
    first = streams[0]
    back = [
      altup.match_magnitude(s @ w.astype(s.dtype), first)
      for s, w in zip(streams[1:], self.altup_out[...], strict=True)
    ]
    return jnp.mean(jnp.stack([first] + back), axis=0)

  def _per_layer_inputs(self, tokens, x):
    """Every layer's per-layer embedding [L, b, s, p]: the token's row of the PLE
    table (ids past it read row 0) times sqrt(p), plus the RMS-normed projection
    of the token embedding times 1/sqrt(e), the sum over sqrt(2)."""
    cfg = self.cfg
    b, s = tokens.shape
    shape = (b, s, cfg.num_layers, cfg.per_layer_dim)
    ids = jnp.where((tokens >= 0) & (tokens < cfg.per_layer_vocab), tokens, 0)
    table = self.per_layer_embed[...]
    if cfg.on_host:  # host memory between steps; on the device for this one
      table = jax.device_put(table, jax.memory.Space.Device)
    table = jnp.take(table, ids, axis=0).astype(x.dtype).reshape(shape)
    table = table * jnp.asarray(cfg.per_layer_dim**0.5, x.dtype)
    proj = x @ self.per_layer_proj[...].astype(x.dtype)
    proj = self.per_layer_norm((proj * jnp.asarray(cfg.embed_dim**-0.5, x.dtype)).reshape(shape))
    return jnp.moveaxis((proj + table) * jnp.asarray(2**-0.5, x.dtype), 2, 0)


def kind(cfg) -> type:
  """The stream module for `DecoderConfig.stream` (None: the plain stream)."""
  return AltUpStreams if isinstance(cfg, AltUpStreamConfig) else Plain
