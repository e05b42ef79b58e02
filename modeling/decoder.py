"""One generic decoder, assembled from per-layer `BlockSpec`s.

Layers repeat with a period (Gemma 3: 5 local + 1 global = 6). After `prefix`
leading layers that break the pattern (DeepSeek's first dense layers, run
unrolled), whole periods are stacked along a leading `layers` axis and run
under `nnx.scan`, so compile time does not grow with depth; the left-over
layers run unrolled after them.

Blocks return (x, stats); MoE blocks report expert load and balance losses,
which the decoder gathers per layer into `aux`.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from modeling.attention.dot_product import Attention
from modeling.attention.linear import linear_attention
from modeling.attention.mla import MLA
from modeling.config import (
  AttentionConfig,
  BlockSpec,
  DecoderConfig,
  DeltaNetConfig,
  MlaConfig,
  MlpConfig,
  MoeConfig,
)
from modeling.layers import altup, params
from modeling.layers.mlp import GatedMLP
from modeling.layers.norms import RMSNorm
from modeling.moe.layer import MoE
from modeling.mtp import MTPModule
from parallelism import rules

# Activations [b, s, e] between blocks: rows split like the batch, the rest whole.
ACTIVATION_AXES = ("batch", None, None)

# Which module a block builds for each config type.
ATTENTION = {AttentionConfig: Attention, MlaConfig: MLA, DeltaNetConfig: linear_attention}
FFN = {MlpConfig: GatedMLP, MoeConfig: MoE}

# Remat policies (config.model.remat): what the backward pass keeps from the
# forward instead of recomputing it. "none" keeps everything (no remat).
REMAT_POLICIES = {
  "full": None,  # keep only each layer's input
  "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight matmuls
  "save_attention_outputs": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


class Block(nnx.Module):
  """Attention + MLP with pre, post (OLMo 2), sandwich (Gemma 3) or deepnorm
  (MiniMax-01) norms, and `spec.residual`'s scales on each residual sum."""

  def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.placement = spec.placement
    self.residual = spec.residual
    d = spec.attention.embed_dim
    norm = lambda: RMSNorm(d, spec.norm, param_dtype=param_dtype, axis_name="embed")
    self.attn = ATTENTION[type(spec.attention)](spec.attention, rngs=rngs, param_dtype=param_dtype)
    self.mlp = FFN[type(spec.mlp)](spec.mlp, rngs=rngs, param_dtype=param_dtype)
    self.is_moe = isinstance(spec.mlp, MoeConfig)
    if spec.placement in ("pre", "sandwich", "deepnorm"):
      self.attn_norm, self.mlp_norm = norm(), norm()
    if spec.placement in ("post", "sandwich"):
      self.attn_post_norm, self.mlp_post_norm = norm(), norm()

  def __call__(
    self, x, *, positions, segment_ids, layer=0, per_layer_input=None, shared_kv=None,
    mlp_width=None,
  ):  # fmt: skip
    """x: [b, s, e] -> (x, stats). `layer`: this block's index in the model (an int,
    or traced inside the layer scan), for attention whose math depends on depth;
    `shared_kv`: K/V stored by earlier layers (KV sharing); `mlp_width`: a dense
    FFN's MatFormer width. No per-layer input."""
    del per_layer_input
    pre = self.placement in ("pre", "sandwich")
    post = self.placement in ("post", "sandwich")
    deep = self.placement == "deepnorm"  # the residual carries the normed stream
    attn_alpha, attn_beta, mlp_alpha, mlp_beta = self.residual
    if deep:
      x = self.attn_norm(x)
    h, attn_stats = _attend(
      self.attn, self.attn_norm(x) if pre else x, positions, segment_ids, layer, shared_kv
    )
    h = checkpoint_name(h, "attention_out")
    x = _residual(x, self.attn_post_norm(h) if post else h, attn_alpha, attn_beta)
    if deep:
      x = self.mlp_norm(x)
    h = _ffn(self.mlp, self.mlp_norm(x) if pre else x, mlp_width)
    h, stats = h if self.is_moe else (h, {})  # MoE also returns its load and balance stats
    x = _residual(x, self.mlp_post_norm(h) if post else h, mlp_alpha, mlp_beta)
    return rules.constrain(x, ACTIVATION_AXES), stats | attn_stats


def _ffn(mlp, x, width):
  """The FFN, as its MatFormer sub-MLP of `width` units when given (dense FFNs)."""
  return mlp(x) if width is None else mlp(x, width=width)


def _attend(attn, x, positions, segment_ids, layer, shared_kv):
  """attn(x) with the extras its kind takes: the layer index (lightning attention's
  depth-dependent decay) or the shared K/V (a KV-reusing layer)."""
  extra = {}
  if getattr(attn, "depth_dependent", False):
    extra["layer"] = layer
  if getattr(attn.cfg, "kv_share", "") == "reuse":
    extra["shared_kv"] = shared_kv
  return attn(x, positions=positions, segment_ids=segment_ids, **extra)


def _residual(x, h, alpha: float, beta: float):
  """alpha * x + beta * h; the plain sum (no multiplies in the graph) at 1, 1."""
  if alpha != 1.0:
    x = x * jnp.asarray(alpha, x.dtype)
  if beta != 1.0:
    h = h * jnp.asarray(beta, h.dtype)
  return x + h


class AltUpBlock(nnx.Module):
  """Gemma 3n's layer on AltUp streams [n, b, s, e] (modeling/layers/altup.py):
  predict the streams; on the active one, sandwich-normed attention beside a
  LAuReL bypass (their sum / sqrt 2), then the sandwich-normed MLP; correct
  every stream from the result; add the gated per-layer embedding to the
  streams after the first."""

  def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    cfg = spec.altup
    self.cfg = cfg
    d = spec.attention.embed_dim
    norm = lambda: RMSNorm(d, spec.norm, param_dtype=param_dtype, axis_name="embed")
    self.attn = ATTENTION[type(spec.attention)](spec.attention, rngs=rngs, param_dtype=param_dtype)
    self.mlp = FFN[type(spec.mlp)](spec.mlp, rngs=rngs, param_dtype=param_dtype)
    self.attn_norm, self.attn_post_norm = norm(), norm()
    self.mlp_norm, self.mlp_post_norm = norm(), norm()
    self.altup = altup.AltUp(cfg, rngs=rngs, param_dtype=param_dtype)
    self.laurel = altup.Laurel(cfg, rngs=rngs, param_dtype=param_dtype)
    self.per_layer = altup.PerLayerGate(cfg, rngs=rngs, param_dtype=param_dtype)

  def __call__(
    self, streams, *, positions, segment_ids, per_layer_input, layer=0, shared_kv=None,
    mlp_width=None,
  ):  # fmt: skip
    """streams [n, b, s, e], per_layer_input [b, s, p] -> (streams, stats)."""
    cfg = self.cfg
    predictions = self.altup.predict(streams)
    active = predictions[cfg.active_idx]
    normed = self.attn_norm(active)
    h, stats = _attend(self.attn, normed, positions, segment_ids, layer, shared_kv)
    h = checkpoint_name(h, "attention_out")
    x = (active + self.attn_post_norm(h) + self.laurel(normed)) * jnp.asarray(2**-0.5, h.dtype)
    x = x + self.mlp_post_norm(_ffn(self.mlp, self.mlp_norm(x), mlp_width))
    corrected = self.altup.correct(predictions, x)
    first = corrected[cfg.active_idx]
    if cfg.correct_scale:
      first = self.altup.scale_output(first)
    gated = self.per_layer(first, per_layer_input)
    corrected = corrected.at[1:].add(gated[None])
    return rules.constrain(corrected, (None,) + ACTIVATION_AXES), stats


def make_block(spec: BlockSpec, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
  """Gemma 3n's AltUp block where the spec has one, else the plain block."""
  return (AltUpBlock if spec.altup else Block)(spec, rngs=rngs, param_dtype=param_dtype)


class Period(nnx.Module):
  """One repetition of the layer pattern: `period` consecutive blocks."""

  def __init__(self, specs: tuple[BlockSpec, ...], *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.blocks = nnx.List([make_block(s, rngs=rngs, param_dtype=param_dtype) for s in specs])

  def __call__(self, x, positions, segment_ids, first_layer, per_layer, shared_kv):
    """per_layer: (per-layer inputs [b, s, period, p] or None, MatFormer FFN
    widths [period] or None)."""
    inputs, widths = per_layer
    stats = []
    for j, block in enumerate(self.blocks):
      x, block_stats = block(
        x, positions=positions, segment_ids=segment_ids, layer=first_layer + j,
        per_layer_input=None if inputs is None else inputs[:, :, j], shared_kv=shared_kv,
        mlp_width=None if widths is None else widths[j],
      )  # fmt: skip
      stats.append(block_stats)
    return x, stats


def _add_layers_axis(module: nnx.Module):
  for _, variable in nnx.iter_graph(module):
    if isinstance(variable, nnx.Variable):
      variable.set_metadata("axes", ("layers",) + params.logical_axes(variable))


class Decoder(nnx.Module):
  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt, std, v, e = cfg.param_dtype, cfg.init_std, cfg.vocab_size, cfg.embed_dim
    self.embed = params.normal(rngs, (v, e), ("vocab", "embed"), std, dt)
    if cfg.altup_inputs:
      n, L, p = cfg.altup_inputs, cfg.num_layers, cfg.per_layer_dim
      table = (cfg.per_layer_vocab, L * p)
      self.per_layer_embed = params.normal(rngs, table, ("vocab", None), std, dt)
      if cfg.per_layer_on_host:  # the trainer lays it (and its optimizer state) out in host memory
        self.per_layer_embed.set_metadata("memory_kind", "pinned_host")
      self.per_layer_proj = params.normal(rngs, (e, L * p), ("embed", None), std, dt)
      self.per_layer_norm = RMSNorm(p, cfg.norm, param_dtype=dt, axis_name="norm")
      # Streams 1..n-1 in from the embedding, and back out before the final norm.
      self.altup_in = params.normal(rngs, (n - 1, e, e), ("streams", "embed", None), std, dt)
      self.altup_out = params.normal(rngs, (n - 1, e, e), ("streams", "embed", None), std, dt)
    block = lambda s: make_block(s, rngs=rngs, param_dtype=dt)
    self.prefix = nnx.List([block(s) for s in cfg.blocks[: cfg.prefix]])
    period_specs = cfg.blocks[cfg.prefix : cfg.prefix + cfg.period]
    self.num_periods = cfg.num_periods
    if self.num_periods:

      @nnx.split_rngs(splits=self.num_periods)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make_stack(rngs):
        return Period(period_specs, rngs=rngs, param_dtype=dt)

      self.stack = make_stack(rngs)
      _add_layers_axis(self.stack)
    tail = cfg.blocks[cfg.prefix + self.num_periods * cfg.period :]
    self.tail = nnx.List([block(s) for s in tail])
    self.final_norm = RMSNorm(e, cfg.norm, param_dtype=dt, axis_name="embed")
    if not cfg.tie_embeddings:
      self.lm_head = params.normal(rngs, (e, v), ("embed", "vocab"), std, dt)
    # Created last so the main model's init does not depend on the MTP depth.
    mtp_block = lambda: make_block(cfg.blocks[-1], rngs=rngs, param_dtype=dt)
    self.mtp = nnx.List(
      [
        MTPModule(mtp_block(), e, cfg.norm, rngs=rngs, init_std=std, param_dtype=dt)
        for _ in range(cfg.mtp_depth)
      ]
    )

  def __call__(
    self, tokens, *, positions=None, segment_ids=None, mtp: bool = True, mlp_widths=None
  ):
    """tokens: [b, s] int -> (logits [b, s, vocab] float32, aux).

    mtp=False skips the multi-token-prediction modules (eval, or an MTP loss
    weight of 0 for the whole run). mlp_widths (one per layer, dense FFNs): run
    the MatFormer sub-model whose layer i uses the first mlp_widths[i] FFN units
    (modeling/matformer.py).

    aux: `aux_loss` (weighted MoE balance losses, summed over layers);
    `max_logits` [softmax layers, heads] (largest pre-softmax logit per head); with
    MoE layers, `expert_load` [moe_layers, experts] token counts, `router_z`
    and `dropped_frac` (means over MoE layers); with MTP, `mtp_logits` (one
    [b, s, vocab] per depth); with DSA indexers, `indexer_kl` [dsa_layers] and
    `indexer_loss` (their weighted sum).
    """
    cfg = self.cfg
    b, s = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(s), (b, s))
    if segment_ids is None:
      segment_ids = jnp.ones((b, s), jnp.int32)
    x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.compute_dtype)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.embed_dim**0.5, cfg.compute_dtype)
    x = rules.constrain(x, ACTIVATION_AXES)
    per_layer = None
    if cfg.altup_inputs:
      per_layer = self._per_layer_inputs(tokens, x)  # [b, s, layers, p]
      x = self._streams_in(x)
    stats, shared_kv = [], {}  # per layer, in layer order; K/V stored for reusing layers
    widths = None if mlp_widths is None else jnp.asarray(mlp_widths, jnp.int32)
    unrolled = lambda i, block: block(
      x, positions=positions, segment_ids=segment_ids, layer=i, shared_kv=shared_kv,
      per_layer_input=None if per_layer is None else per_layer[:, :, i],
      mlp_width=None if widths is None else widths[i],
    )  # fmt: skip
    for i, block in enumerate(self.prefix):
      x, block_stats = unrolled(i, block)
      shared_kv.update(block_stats.pop("kv", {}))
      stats.append(block_stats)
    if self.num_periods:
      x, stacked = self._scan(x, positions, segment_ids, per_layer, widths, shared_kv)
      # stacked[j][key]: [num_periods, ...] for block j of the period -> layer p * period + j.
      for p in range(self.num_periods):
        stats.extend(jax.tree.map(lambda a: a[p], stacked))
    first_tail = cfg.prefix + self.num_periods * cfg.period
    for j, block in enumerate(self.tail):
      x, block_stats = unrolled(first_tail + j, block)
      shared_kv.update(block_stats.pop("kv", {}))
      stats.append(block_stats)
    if cfg.altup_inputs:
      x = self._streams_out(x)
    head = (self.embed[...].T if cfg.tie_embeddings else self.lm_head[...]).astype(x.dtype)
    logits = self._logits(self.final_norm(x), head)
    mtp_logits = []
    for k, module in enumerate(self.mtp if mtp else (), start=1):
      # Depth k at position i sees token i+k (wrapped positions are masked in the loss).
      emb = jnp.take(self.embed[...], jnp.roll(tokens, -k, axis=1), axis=0).astype(x.dtype)
      if cfg.embed_scale:
        emb = emb * jnp.asarray(cfg.embed_dim**0.5, cfg.compute_dtype)
      x, normed, block_stats = module(
        x, emb, positions=positions, segment_ids=segment_ids, layer=cfg.num_layers - 1
      )
      mtp_logits.append(self._logits(normed, head))
      stats.append(block_stats)
    aux = self._aux(stats)
    if mtp_logits:
      aux["mtp_logits"] = mtp_logits
    return logits, aux

  def _streams_in(self, x):
    """[b, s, e] -> AltUp streams [n, b, s, e]: x, then projections of x rescaled to
    its per-token RMS."""
    extra = [altup.match_magnitude(x @ w.astype(x.dtype), x) for w in self.altup_in[...]]
    return jnp.stack([x] + extra)

  def _streams_out(self, streams):
    """[n, b, s, e] -> [b, s, e]: stream 0 and the others' projections back (rescaled
    to stream 0's RMS), averaged."""
    first = streams[0]
    back = [
      altup.match_magnitude(s @ w.astype(s.dtype), first)
      for s, w in zip(streams[1:], self.altup_out[...], strict=True)
    ]
    return jnp.mean(jnp.stack([first] + back), axis=0)

  def _per_layer_inputs(self, tokens, x):
    """Every layer's per-layer embedding [b, s, layers, p]: the token's row of the
    PLE table (ids past it read row 0) times sqrt(p), plus the RMS-normed
    projection of the token embedding times 1/sqrt(e), the sum over sqrt(2)."""
    cfg = self.cfg
    b, s = tokens.shape
    shape = (b, s, cfg.num_layers, cfg.per_layer_dim)
    ids = jnp.where((tokens >= 0) & (tokens < cfg.per_layer_vocab), tokens, 0)
    table = self.per_layer_embed[...]
    if cfg.per_layer_on_host:  # host memory between steps; on the device for this one
      table = jax.device_put(table, jax.memory.Space.Device)
    table = jnp.take(table, ids, axis=0).astype(x.dtype).reshape(shape)
    table = table * jnp.asarray(cfg.per_layer_dim**0.5, x.dtype)
    proj = x @ self.per_layer_proj[...].astype(x.dtype)
    proj = self.per_layer_norm((proj * jnp.asarray(cfg.embed_dim**-0.5, x.dtype)).reshape(shape))
    return (proj + table) * jnp.asarray(2**-0.5, x.dtype)

  def layers(self) -> list[tuple[Block, int | None]]:
    """(block, period index into its stacked params or None) per layer, in the
    order of `aux` rows: prefix, scanned periods, tail, MTP."""
    blocks = [(b, None) for b in self.prefix]
    if self.num_periods:
      blocks += [(b, p) for p in range(self.num_periods) for b in self.stack.blocks]
    blocks += [(b, None) for b in self.tail]
    return blocks + [(m.block, None) for m in self.mtp]

  def softmax_layers(self) -> list[tuple[Block, int | None]]:
    """`layers()` with softmax attention: the rows of aux["max_logits"]."""
    return [(b, p) for b, p in self.layers() if not isinstance(b.attn.cfg, DeltaNetConfig)]

  def _logits(self, x, head):
    logits = jnp.einsum("bse,ev->bsv", x, head, preferred_element_type=jnp.float32)
    if self.cfg.logit_scale != 1.0:
      logits = logits * self.cfg.logit_scale
    if self.cfg.final_softcap > 0:
      logits = self.cfg.final_softcap * jnp.tanh(logits / self.cfg.final_softcap)
    return logits

  def _aux(self, layers: list[dict]) -> dict:
    cfg = self.cfg
    # [softmax layers, heads] in `softmax_layers()` order (DeltaNet layers have no logits).
    rows = [st["max_logits"] for st in layers if "max_logits" in st]
    aux = {"max_logits": jnp.stack(rows) if rows else jnp.zeros((1, 1), jnp.float32)}
    kls = [st["indexer_kl"] for st in layers if "indexer_kl" in st]  # DSA layers
    if kls:
      aux["indexer_kl"] = jnp.stack(kls)  # [dsa_layers]
      aux["indexer_loss"] = cfg.indexer_loss_weight * aux["indexer_kl"].sum()
    stats = [st for st in layers if "load" in st]  # MoE layers
    if not stats:
      return aux | {"aux_loss": jnp.zeros((), jnp.float32)}
    total = lambda key: sum(st[key] for st in stats)
    aux_loss = (
      cfg.seq_aux_weight * total("seq_aux")
      + cfg.switch_aux_weight * total("switch_aux")
      + cfg.router_z_weight * total("router_z")
    )
    return aux | {
      "aux_loss": aux_loss,
      "expert_load": jnp.stack([st["load"] for st in stats]),
      "dropped_frac": total("dropped_frac") / len(stats),
      "router_z": total("router_z") / len(stats),
    }

  def _scan(self, x, positions, segment_ids, per_layer, widths, shared_kv):
    """Runs the stacked periods with jax.lax.scan over their split state (the
    forward mutates no variable), under jax.checkpoint when remat is on. Period p
    starts at layer prefix + p * period (scanned too: depth-dependent attention)
    and reads its layers' per-layer inputs and MatFormer widths; stored K/V reach
    it as constants."""
    cfg = self.cfg
    graphdef, state = nnx.split(self.stack)
    first_layers = cfg.prefix + cfg.period * jnp.arange(self.num_periods)
    start, end = cfg.prefix, cfg.prefix + self.num_periods * cfg.period
    if per_layer is not None:  # [b, s, layers, p] -> [periods, b, s, period, p]
      b, s, _, p = per_layer.shape
      per_layer = per_layer[:, :, start:end].reshape(b, s, self.num_periods, cfg.period, p)
      per_layer = jnp.moveaxis(per_layer, 2, 0)
    if widths is not None:  # [layers] -> [periods, period]
      widths = widths[start:end].reshape(self.num_periods, cfg.period)

    def step(x, xs):
      period_state, first_layer, inputs = xs
      period = nnx.merge(graphdef, period_state)
      return period(x, positions, segment_ids, first_layer, inputs, shared_kv)

    if cfg.remat != "none":
      step = jax.checkpoint(step, policy=REMAT_POLICIES[cfg.remat])
    return jax.lax.scan(step, x, (state, first_layers, (per_layer, widths)))
