"""`config.model` expanded into per-layer block specs.

`decoder_config(config.model, options)` checks the model's top-level fields,
asks `sections.py` for each component's config, and lays out one `BlockSpec`
per layer from the family's patterns. `Options` carries what shapes the built
model besides `config.model` (how it runs, its dtypes, the DSA training stage,
the init scale); the trainer fills it from the other sections, and its
defaults suit tests. Components own their dataclasses; this module only
imports them.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from modeling import sections
from modeling.attention import kernels
from modeling.attention.dot_product import AttentionConfig
from modeling.attention.linear import DeltaNetConfig
from modeling.attention.mla import MlaConfig
from modeling.blocks import BlockSpec
from modeling.decoder import DecoderConfig
from modeling.layers import grouped
from modeling.layers import mlp as mlp_lib
from modeling.layers.altup import AltUpConfig
from modeling.layers.fp8 import Fp8
from modeling.layers.mlp import MlpConfig
from modeling.layers.norms import NORMS, NormConfig
from modeling.layers.rope import ROPE_SCALINGS
from modeling.moe.config import MoeConfig
from modeling.sections import check, choice
from modeling.streams import AltUpStreamConfig

PLACEMENTS = ("pre", "post", "sandwich", "deepnorm")
# l2_rope_layers: RMS over head_dim without a scale, on the RoPE layers only (Llama 4).
QK_NORMS = ("none", "head", "full", "l2_rope_layers")
ATTENTION_KINDS = ("global", "local", "chunked", "linear")
ROPE_KINDS = ("rope", "nope")
DTYPES = ("float32", "bfloat16", "float16")
REMATS = ("none", "full", "save_dots", "save_attention_outputs", "offload_dots")


@dataclasses.dataclass(frozen=True)
class Options:
  """What shapes the built model besides `config.model`."""

  param_dtype: str = "float32"  # precision.*
  compute_dtype: str = "float32"
  fp8: Fp8 | None = None
  remat: str = "none"  # compute.*
  scan_layers: bool = True
  attention_kernel: str = "xla"
  mla_absorbed: bool = False
  moe_dispatch: str = "dropless"
  moe_capacity_factor: float = 1.25
  moe_ep_capacity_factor: float = 0.0
  moe_matmul: str = "auto"
  ple_host_memory: bool = False
  indexer_stage: str = "sparse"  # objective.indexer_stage
  init_std: float = 0.02  # train.init_std
  max_logits: bool = False  # the step needs every head's largest logit (optim.qk_clip_tau)
  platform: str = ""  # the kernels' target: cpu | gpu | tpu; "" = jax.default_backend()


def _check_model(m):
  """The model's top-level fields (each section checks its own)."""
  for name in ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "mlp_dim"):
    check(m[name] > 0, f"model.{name}={m[name]} must be positive")
  check(
    m.num_heads % m.num_kv_heads == 0,
    f"model.num_kv_heads={m.num_kv_heads} must divide model.num_heads={m.num_heads}; "
    f"pick a divisor of {m.num_heads}",
  )
  check(
    m.head_dim > 0 or m.embed_dim % m.num_heads == 0,
    f"model.embed_dim={m.embed_dim} is not divisible by model.num_heads={m.num_heads}; "
    "set model.head_dim explicitly",
  )
  choice("model.norm", m.norm, NORMS)
  choice("model.norm_placement", m.norm_placement, PLACEMENTS)
  choice("model.qk_norm", m.qk_norm, QK_NORMS)
  choice("model.activation", m.activation, tuple(mlp_lib.ACTIVATIONS))
  choice("model.rope_scaling.type", m.rope_scaling.type, ROPE_SCALINGS)
  choice("model.attention", m.attention, ("gqa", "mla"))
  check(m.mtp.depth >= 0, f"model.mtp.depth={m.mtp.depth} must be >= 0")
  check(m.max_len >= 0, f"model.max_len={m.max_len} must be >= 0 (0: no limit)")
  check(m.logit_scale > 0, f"model.logit_scale={m.logit_scale} must be positive (1.0 = off)")
  check(
    m.nope_temperature_floor > 0,
    f"model.nope_temperature_floor={m.nope_temperature_floor} must be positive",
  )
  _check_patterns(m)


def _check_patterns(m):
  for name, valid in (
    ("attention_pattern", ATTENTION_KINDS),
    ("rope_pattern", ROPE_KINDS),
    ("ffn_pattern", ("dense", "moe")),
  ):
    check(len(m[name]) > 0, f"model.{name} must not be empty")
    for kind in m[name]:
      choice(f"model.{name} entry", kind, valid)
  kinds = set(m.attention_pattern)
  check(
    m.attention == "gqa" or "chunked" not in kinds,
    "model.attention_pattern 'chunked' layers need model.attention='gqa'",
  )
  check(
    "chunked" not in kinds or m.attention_chunk > 0,
    "model.attention_chunk must be > 0 when model.attention_pattern has 'chunked' layers",
  )
  check(
    "local" not in kinds or m.sliding_window > 0,
    "model.sliding_window must be > 0 when model.attention_pattern has 'local' layers",
  )
  check(
    0.0 < m.partial_rotary_factor <= 1.0,
    f"model.partial_rotary_factor={m.partial_rotary_factor} must be in (0, 1]",
  )
  sections.check_per_layer(m, "mlp_dims", lambda v: v > 0, "positive widths")
  sections.check_per_layer(m, "activation_sparsity", lambda v: 0 <= v < 1, "values in [0, 1)")


def _check_options(o: Options):
  choice("precision.param_dtype", o.param_dtype, DTYPES)
  choice("precision.compute_dtype", o.compute_dtype, DTYPES)
  choice("compute.remat", o.remat, REMATS)
  choice("compute.moe_matmul", o.moe_matmul, grouped.METHODS)


@dataclasses.dataclass(frozen=True)
class _Parts:
  """The components every layer picks from, built once."""

  norm: NormConfig
  gqa: AttentionConfig
  ropes: tuple  # (global, local) RopeConfig
  mla: MlaConfig | None
  linear: DeltaNetConfig | None
  mlp: MlpConfig
  moe: MoeConfig | None
  altup: AltUpConfig | None
  kv_share: list


def _parts(m, o: Options) -> _Parts:
  head_dim = m.head_dim or m.embed_dim // m.num_heads
  rotary_dim = int(head_dim * m.partial_rotary_factor)
  check(
    rotary_dim % 2 == 0 and rotary_dim > 0,
    f"model.partial_rotary_factor={m.partial_rotary_factor} gives an odd or empty "
    f"rotary dim {rotary_dim} for head_dim {head_dim}",
  )
  norm, std = NormConfig(m.norm, m.norm_eps), o.init_std
  ropes = sections.ropes(m, rotary_dim)
  dispatch = dict(
    dispatch=o.moe_dispatch,
    capacity_factor=o.moe_capacity_factor,
    ep_capacity_factor=o.moe_ep_capacity_factor,
    matmul=grouped.resolve(o.moe_matmul, o.platform or jax.default_backend()),
  )
  kinds = [m.attention_pattern[i % len(m.attention_pattern)] for i in range(m.num_layers)]
  mla = None
  if m.attention == "mla":
    mla = sections.mla(m, ropes[0], norm, o.fp8, std, o.indexer_stage)
    mla = dataclasses.replace(mla, absorbed=o.mla_absorbed)
  linear = sections.delta_net(m, std) if "linear" in kinds else None
  return _Parts(
    norm=norm,
    gqa=sections.attention(m, head_dim, norm, o.fp8, std),
    ropes=ropes,
    mla=mla,
    linear=linear,
    mlp=MlpConfig(m.embed_dim, m.mlp_dim, m.activation, m.mlp_bias, std, o.fp8),
    moe=sections.moe(m, o.fp8, std, dispatch) if "moe" in m.ffn_pattern else None,
    altup=sections.altup(m, norm, std),
    kv_share=sections.kv_share(m, kinds),
  )


def _attention(m, parts: _Parts, i: int):
  """Layer i's attention config: its kind, window or chunk, RoPE or not."""
  kind = m.attention_pattern[i % len(m.attention_pattern)]
  if kind == "linear":
    return parts.linear
  local = kind == "local"
  window = m.sliding_window if local else 0
  rope = None
  if m.rope_pattern[i % len(m.rope_pattern)] == "rope":
    rope = parts.ropes[1] if local else parts.ropes[0]
  if parts.mla is not None:
    return dataclasses.replace(parts.mla, window=window, rope=parts.mla.rope if rope else None)
  qk_norm = m.qk_norm
  if qk_norm == "l2_rope_layers":
    qk_norm = "l2" if rope else "none"
  return dataclasses.replace(
    parts.gqa,
    kv_share=parts.kv_share[i],
    window=window,
    chunk=m.attention_chunk if kind == "chunked" else 0,
    rope=rope,
    qk_norm=qk_norm,
    temperature_scale=0.0 if rope else m.nope_temperature_scale,
  )


def _block(m, parts: _Parts, o: Options, i: int) -> BlockSpec:
  kind = m.attention_pattern[i % len(m.attention_pattern)]
  is_moe = i >= m.first_dense_layers and m.ffn_pattern[i % len(m.ffn_pattern)] == "moe"
  r = m.residual_scale
  residual = (r.linear_alpha, r.linear_beta) if kind == "linear" else (r.attn_alpha, r.attn_beta)
  residual = tuple(float(v) for v in (*residual, r.mlp_alpha, r.mlp_beta))
  ffn = parts.moe if is_moe else sections.layer_mlp(m, parts.mlp, i)
  request = kernels.Request(o.attention_kernel, o.platform, o.compute_dtype, o.max_logits)
  attention = kernels.resolve(_attention(m, parts, i), request)
  return BlockSpec(attention, ffn, parts.norm, m.norm_placement, residual, parts.altup)


def decoder_config(m, options: Options = Options()) -> DecoderConfig:
  """Checks `config.model` and expands it into per-layer block specs under `options`."""
  _check_model(m)
  _check_options(options)
  o = options
  parts = _parts(m, o)
  blocks = tuple(_block(m, parts, o, i) for i in range(m.num_layers))
  first = min(m.first_dense_layers, m.num_layers)
  period = math.lcm(len(m.attention_pattern), len(m.rope_pattern), len(m.ffn_pattern))
  period = max(min(period, m.num_layers - first), 1)
  prefix, num_periods = scanned_run(blocks, period, first)
  return DecoderConfig(
    vocab_size=m.vocab_size,
    embed_dim=m.embed_dim,
    blocks=blocks,
    period=period,
    prefix=prefix,
    num_periods=num_periods if o.scan_layers else 0,
    stream=_stream(m, parts, o),
    norm=parts.norm,
    tie_embeddings=m.tie_embeddings,
    embed_scale=m.embed_scale,
    final_softcap=m.final_logit_softcap,
    logit_scale=m.logit_scale,
    init_std=o.init_std,
    scan_layers=o.scan_layers,
    remat=o.remat,
    param_dtype=jnp.dtype(o.param_dtype),
    compute_dtype=jnp.dtype(o.compute_dtype),
    mtp_depth=m.mtp.depth,
  )


def _stream(m, parts: _Parts, o: Options) -> AltUpStreamConfig | None:
  """Gemma 3n's AltUp streams with per-layer embeddings, or None (a plain stream)."""
  if parts.altup is None:
    return None
  return AltUpStreamConfig(
    embed_dim=m.embed_dim,
    num_layers=m.num_layers,
    num_inputs=m.altup.num_inputs,
    per_layer_vocab=m.per_layer_input.vocab_size or m.vocab_size,
    per_layer_dim=m.per_layer_input.dim,
    norm=parts.norm,
    on_host=o.ple_host_memory,
    init_std=o.init_std,
  )


def scanned_run(blocks, period: int, first: int) -> tuple[int, int]:
  """(prefix, periods): the longest run of identical whole periods starting at or
  after `first` (the earliest such start on ties). Layers before it run unrolled,
  and so do those after it (Gemma 3n's sparse first layers and KV-sharing last ones)."""
  best = (first, 0)
  for start in range(first, len(blocks)):
    unit = blocks[start : start + period]
    count = 0
    while start + (count + 1) * period <= len(blocks) and (
      blocks[start + count * period : start + (count + 1) * period] == unit
    ):
      count += 1
    if count > best[1]:
      best = (start, count)
  return best
