"""One generic decoder, assembled from per-layer `BlockSpec`s.

Layers repeat with a period (Gemma 3: 5 local + 1 global = 6). After `prefix`
leading layers that break the pattern (DeepSeek's first dense layers, run
unrolled), whole periods are stacked along a leading `layers` axis and run
under `nnx.scan`, so compile time does not grow with depth; the left-over
layers run unrolled after them. The residual stream's kind (modeling/streams.py)
decides how the embedding enters it, what each layer gets besides it, how it
leaves, and which block class runs on it.

Every sublayer's stats come back in `aux["layers"]`, keyed by the module path of
the sublayer that reported them ("prefix/0/mlp", "stack/blocks/1/attn",
"mtp/0/block/mlp"); entries of the scanned layers carry a leading [periods]
axis, like their stacked params. The trainer's hooks find their layers by
these paths.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import Recompute

from modeling import streams
from modeling.blocks import ACTIVATION_AXES, BlockSpec
from modeling.context import Context
from modeling.layers import linear, params
from modeling.layers.norms import NormConfig, RMSNorm
from modeling.mtp import MTPModule
from parallelism import pipeline, rules


def _either(*policies):
  """A remat policy keeping (or offloading) what the first of `policies` that does
  keeps (or offloads)."""

  def policy(prim, *args, **params):
    for p in policies:
      case = p(prim, *args, **params)
      if case is not False and case is not Recompute:
        return case
    return Recompute

  return policy


_policies = jax.checkpoint_policies
# Remat policies (config.compute.remat): what the backward pass keeps from the
# forward instead of recomputing it. "none" keeps everything (no remat). The weight
# matmuls are unbatched dots and the linear layers' named outputs (linear.NAME).
REMAT_POLICIES = {
  "full": None,  # keep only each layer's input
  "save_dots": _either(
    _policies.dots_with_no_batch_dims_saveable, _policies.save_only_these_names(linear.NAME)
  ),
  "save_attention_outputs": _policies.save_only_these_names("attention_out"),
  # save_dots' outputs parked in pinned host memory until the backward (GPU/TPU move
  # them over PCIe; on CPU the host is the device, so it saves nothing there).
  "offload_dots": _either(
    _policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
    _policies.save_and_offload_only_these_names(
      names_which_can_be_saved=[],
      names_which_can_be_offloaded=[linear.NAME],
      offload_src="device",
      offload_dst="pinned_host",
    ),
  ),
}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  vocab_size: int
  embed_dim: int
  blocks: tuple[BlockSpec, ...]
  period: int  # blocks[i] == blocks[i + period] for i >= prefix.
  norm: NormConfig
  prefix: int = 0  # leading layers that break the pattern (first dense layers), run unrolled.
  tie_embeddings: bool = False
  embed_scale: bool = False
  final_softcap: float = 0.0
  logit_scale: float = 1.0  # logits *= logit_scale, before final_softcap.
  init_std: float = 0.02
  scan_layers: bool = True
  remat: str = "none"
  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32
  mtp_depth: int = 0  # multi-token prediction modules after the trunk.
  num_periods: int = 0  # whole periods from `prefix` on run under the layer scan.
  stream: Any = None  # the stream kind's config (modeling/streams.py); None: plain.
  pipeline: Any = None  # parallelism.pipeline.Schedule: the periods run over `stage`.

  @property
  def num_layers(self) -> int:
    return len(self.blocks)


def layer_paths(cfg: DecoderConfig) -> list[tuple[str, int | None]]:
  """(block path, period index into its stacked params or None) per layer, in layer
  order: prefix, scanned periods, tail, then the MTP modules' blocks."""
  out = [(f"prefix/{i}", None) for i in range(cfg.prefix)]
  out += [(f"stack/blocks/{j}", p) for p in range(cfg.num_periods) for j in range(cfg.period)]
  first_tail = cfg.prefix + cfg.num_periods * cfg.period
  out += [(f"tail/{j}", None) for j in range(cfg.num_layers - first_tail)]
  return out + [(f"mtp/{k}/block", None) for k in range(cfg.mtp_depth)]


def by_layer(cfg: DecoderConfig, aux: dict, sublayer: str, name: str):
  """The `name` stat of every layer's `sublayer` ("attn" or "mlp") that reports
  it, stacked in layer order: for metrics and tests, never for finding a layer."""
  rows = []
  for path, period in layer_paths(cfg):
    stats = aux["layers"].get(f"{path}/{sublayer}", {})
    if name in stats:
      rows.append(stats[name] if period is None else stats[name][period])
  return jnp.stack(rows) if rows else None


def project(cfg: DecoderConfig, x, head):
  """The output head: normed hidden [..., e] -> float32 logits [..., vocab] (the
  head [e, vocab] cast to x's dtype, then logit scale and final soft-cap)."""
  out = jnp.einsum("...e,ev->...v", x, head.astype(x.dtype), preferred_element_type=jnp.float32)
  if cfg.logit_scale != 1.0:
    out = out * cfg.logit_scale
  if cfg.final_softcap > 0:
    out = cfg.final_softcap * jnp.tanh(out / cfg.final_softcap)
  return out


class Period(nnx.Module):
  """One repetition of the layer pattern: `period` consecutive blocks."""

  def __init__(self, specs: tuple[BlockSpec, ...], block, *, rngs: nnx.Rngs, param_dtype):
    self.blocks = nnx.List([block(s, rngs=rngs, param_dtype=param_dtype) for s in specs])

  def __call__(self, x, ctx: Context):
    """ctx.layer: the period's first layer; ctx.inputs: per-layer inputs [period, ...];
    ctx.cache: each block's cache (a tuple) when decoding."""
    stats = []
    for j, block in enumerate(self.blocks):
      inputs = {name: value[j] for name, value in ctx.inputs.items()}
      cache = ctx.cache[j] if ctx.cache else None
      x, block_stats = block(x, ctx.at_layer(ctx.layer + j, inputs, cache))
      if any("shared" in st for st in block_stats.values()):
        raise NotImplementedError("a layer that leaves K/V for later layers cannot be scanned")
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
    stream = streams.kind(cfg.stream)
    self.stream = stream(cfg.stream, rngs=rngs, param_dtype=dt)
    block = lambda s: stream.block(s, rngs=rngs, param_dtype=dt)
    self.prefix = nnx.List([block(s) for s in cfg.blocks[: cfg.prefix]])
    period_specs = cfg.blocks[cfg.prefix : cfg.prefix + cfg.period]
    self.num_periods = cfg.num_periods
    if self.num_periods:

      @nnx.split_rngs(splits=self.num_periods)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make_stack(rngs):
        return Period(period_specs, stream.block, rngs=rngs, param_dtype=dt)

      self.stack = make_stack(rngs)
      _add_layers_axis(self.stack)
    tail = cfg.blocks[cfg.prefix + self.num_periods * cfg.period :]
    self.tail = nnx.List([block(s) for s in tail])
    self.final_norm = RMSNorm(e, cfg.norm, param_dtype=dt, axis_name="embed")
    if not cfg.tie_embeddings:
      self.lm_head = params.normal(rngs, (e, v), ("embed", "vocab"), std, dt)
    # Created last so the main model's init does not depend on the MTP depth.
    self.mtp = nnx.List(
      [
        MTPModule(block(cfg.blocks[-1]), e, cfg.norm, rngs=rngs, init_std=std, param_dtype=dt)
        for _ in range(cfg.mtp_depth)
      ]
    )

  def __call__(
    self, tokens, *, positions=None, segment_ids=None, mtp: bool = True, layer_inputs=None,
    logits: bool = True, cache_len: int = 0, cache: dict | None = None,
  ):  # fmt: skip
    """tokens: [b, s] int -> (logits [b, s, vocab] float32, aux).

    mtp=False skips the multi-token-prediction modules (eval, or an MTP loss
    weight of 0 for the whole run). layer_inputs: {name: [layers, ...]} more
    per-layer inputs beside the stream's; layer i finds its slice in
    ctx.inputs (e.g. a nested sub-model's FFN widths). logits=False stops
    before the output head: (normed hidden [b, s, e], aux) for `project` with
    `head()`, so a loss can project a chunk at a time.

    Generation (modeling/generate.py): cache_len > 0 makes it a prefill, each
    attention layer returning its cache for up to cache_len positions in its
    stats (`cache`); given those caches ({sublayer path: cache}, e.g.
    "stack/blocks/0/attn"), it is a decode step of new positions against them
    and returns them updated the same way.

    aux: `layers` {sublayer path: stats} (see the module docstring): attention
    `max_logits` [heads] and with DSA `indexer_kl`; MoE `load` [experts] token
    counts, `seq_aux`, `switch_aux`, `router_z`, `dropped_frac`; with MTP,
    `mtp_logits` (one [b, s, vocab] per depth; with logits=False `mtp_hidden`,
    one normed [b, s, e] per depth).
    """
    cfg = self.cfg
    x, ctx, inputs, stats = self.front(
      tokens, positions=positions, segment_ids=segment_ids, layer_inputs=layer_inputs,
      cache_len=cache_len, cache=cache,
    )  # fmt: skip
    if self.num_periods and cfg.pipeline is not None and not (cache or cache_len):
      x = self._pipeline(x, ctx, stats)
    elif self.num_periods:
      x = self._scan(x, ctx, inputs, cache or {}, stats)
    return self.back(x, tokens, ctx, inputs, stats, mtp=mtp, logits=logits, cache=cache)

  def front(self, tokens, *, positions=None, segment_ids=None, layer_inputs=None,
            cache_len: int = 0, cache: dict | None = None):  # fmt: skip
    """What runs before the stacked periods: the embedding into the stream and the
    prefix layers. Returns (x, ctx, per-layer inputs, stats so far) for `back`."""
    b, s = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(s), (b, s))
    if segment_ids is None:
      segment_ids = jnp.ones((b, s), jnp.int32)
    x = self._embed(tokens)
    x, inputs = self.stream.enter(tokens, x)  # per-layer inputs: [layers, ...] each
    inputs |= layer_inputs or {}
    ctx = Context(positions, segment_ids, cache_len=cache_len, decode=cache is not None)
    stats = {}
    x = self._unrolled(x, ctx, "prefix", 0, inputs, cache or {}, stats)
    return x, ctx, inputs, stats

  def back(self, x, tokens, ctx, inputs, stats: dict, *, mtp: bool = True, logits: bool = True,
           cache: dict | None = None):  # fmt: skip
    """What runs after the stacked periods (x: their output): the tail layers, the
    stream's exit, the final norm, the MTP modules and the head; as `__call__`."""
    cfg = self.cfg
    first_tail = cfg.prefix + self.num_periods * cfg.period
    x = self._unrolled(x, ctx, "tail", first_tail, inputs, cache or {}, stats)
    x = self.stream.exit(x)
    hidden, aux = self.final_norm(x), {"layers": stats}
    if mtp and self.mtp:
      aux["mtp_hidden"] = self._mtp(tokens, x, ctx, stats)
    if not logits:
      return hidden, aux
    to_logits = lambda h: project(cfg, h, self.head())
    if "mtp_hidden" in aux:
      aux["mtp_logits"] = [to_logits(h) for h in aux.pop("mtp_hidden")]
    return to_logits(hidden), aux

  def head(self):
    """The output head's weights [embed, vocab] as stored (the tied embedding's
    transpose), for `project`."""
    return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

  def _embed(self, tokens):
    cfg = self.cfg
    x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.compute_dtype)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.embed_dim**0.5, cfg.compute_dtype)
    return rules.constrain(x, ACTIVATION_AXES)

  def _unrolled(self, x, ctx, group: str, first: int, inputs, cache: dict, stats):
    """Runs the unrolled blocks of `group` ("prefix" or "tail"), whose first is layer
    `first`; what a block leaves for later layers joins ctx.shared."""
    for j, block in enumerate(getattr(self, group)):
      layer = first + j
      layer_inputs = {k: v[layer] for k, v in inputs.items()}
      layer_ctx = ctx.at_layer(layer, layer_inputs, cache.get(f"{group}/{j}/attn"))
      x, block_stats = self._remat(lambda b, x: b(x, layer_ctx), block, x)
      for sublayer, st in block_stats.items():
        ctx.shared.update(st.pop("shared", {}))
        if st:
          stats[f"{group}/{j}/{sublayer}"] = st
    return x

  def _mtp(self, tokens, x, ctx, stats) -> list:
    """Each depth k at position i sees token i+k (wrapped positions are masked in
    the loss); returns the normed [b, s, e] output per depth, for the head."""
    cfg, out = self.cfg, []
    ctx = ctx.at_layer(cfg.num_layers - 1, {})
    for k, module in enumerate(self.mtp):
      emb = self._embed(jnp.roll(tokens, -(k + 1), axis=1)).astype(x.dtype)
      x, normed, block_stats = self._remat(lambda m, x, emb: m(x, emb, ctx), module, x, emb)
      out.append(normed)
      stats.update({f"mtp/{k}/block/{n}": st for n, st in block_stats.items() if st})
    return out

  def _remat(self, f, module, *arrays):
    """f(module, *arrays), under jax.checkpoint with the remat policy when remat is
    on: the backward recomputes what the policy does not keep (as for scanned layers)."""
    if self.cfg.remat == "none":
      return f(module, *arrays)
    graphdef, state = nnx.split(module)
    run = lambda state, *arrays: f(nnx.merge(graphdef, state), *arrays)
    return jax.checkpoint(run, policy=REMAT_POLICIES[self.cfg.remat])(state, *arrays)

  def layers(self) -> list[tuple[nnx.Module, int | None]]:
    """(block, period index into its stacked params or None) per layer, in the
    order of `layer_paths`."""
    blocks = [(b, None) for b in self.prefix]
    if self.num_periods:
      blocks += [(b, p) for p in range(self.num_periods) for b in self.stack.blocks]
    blocks += [(b, None) for b in self.tail]
    return blocks + [(m.block, None) for m in self.mtp]

  def _scan(self, x, ctx, inputs, cache: dict, stats):
    """Runs the stacked periods with jax.lax.scan over their split state (the
    forward mutates no variable), under jax.checkpoint when remat is on. Period p
    starts at layer prefix + p * period (scanned too: depth-dependent attention)
    and reads its layers' per-layer inputs; ctx.shared reaches it as constants."""
    cfg = self.cfg
    graphdef, state = nnx.split(self.stack)
    first_layers = cfg.prefix + cfg.period * jnp.arange(self.num_periods)
    start, end = cfg.prefix, cfg.prefix + self.num_periods * cfg.period
    period_inputs = {  # [layers, ...] -> [periods, period, ...]
      k: v[start:end].reshape((self.num_periods, cfg.period) + v.shape[1:])
      for k, v in inputs.items()
    }

    caches = tuple(cache.get(f"stack/blocks/{j}/attn") for j in range(cfg.period))

    def step(x, xs):
      period_state, first_layer, layer_inputs, caches = xs
      period = nnx.merge(graphdef, period_state)
      return period(x, ctx.at_layer(first_layer, layer_inputs, caches if ctx.decode else None))

    if cfg.remat != "none":
      step = jax.checkpoint(step, policy=REMAT_POLICIES[cfg.remat])
    x, stacked = jax.lax.scan(step, x, (state, first_layers, period_inputs, caches))
    stack_stats(stacked, stats)
    return x

  def _pipeline(self, x, ctx, stats):
    """The stacked periods over the mesh's `stage` axis (parallelism/pipeline.py):
    each chunk of periods runs as the layer scan does, on one micro-batch."""
    chunk = self.chunk_fn(ctx)
    if self.cfg.remat == "full":  # keep one input per stage and iteration, not one per layer
      chunk = jax.checkpoint(chunk)
    carry = {"x": x, "positions": ctx.positions, "segment_ids": ctx.segment_ids}
    x, stacked = pipeline.run(chunk, nnx.state(self.stack), carry, self.cfg.pipeline)
    stack_stats(stacked, stats)
    return x

  def chunk_fn(self, ctx):
    """chunk(weights [k, ...], carry {x, positions, segment_ids}, chunk index) -> (x,
    stats [k, ...]): k consecutive stacked periods of chunk `index` (of the schedule's
    stages x virtual) on one micro-batch, as the layer scan runs them."""
    cfg, sched = self.cfg, self.cfg.pipeline
    graphdef = nnx.graphdef(self.stack)
    k = self.num_periods // sched.chunks

    def step(x, xs):
      period_state, first_layer, positions, segment_ids = xs
      period = nnx.merge(graphdef, period_state)
      mb_ctx = dataclasses.replace(ctx, positions=positions, segment_ids=segment_ids)
      return period(x, mb_ctx.at_layer(first_layer, {}))

    if cfg.remat != "none":
      step = jax.checkpoint(step, policy=REMAT_POLICIES[cfg.remat])

    def chunk(weights, carry, index):
      first_layers = cfg.prefix + cfg.period * (index * k + jnp.arange(k))
      run = lambda x, xs: step(x, (*xs, carry["positions"], carry["segment_ids"]))
      return jax.lax.scan(run, carry["x"], (weights, first_layers))

    return chunk


def stack_stats(stacked, stats: dict):
  """Stats of the stacked periods ([periods, ...] per block j of the period) into
  `stats` by module path."""
  for j, block_stats in enumerate(stacked):
    stats.update({f"stack/blocks/{j}/{n}": st for n, st in block_stats.items() if st})
