"""Frozen dataclass configs for the modules, validated once from `config.model`.

Each module receives the small dataclass it needs, never the whole tree.
`decoder_config(cfg.model, precision)` turns the ConfigDict into a
`DecoderConfig` whose `blocks` hold one `BlockSpec` per layer.
"""

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

NORMS = ("rms", "rms_one_plus")
PLACEMENTS = ("pre", "post", "sandwich", "deepnorm")
QK_NORMS = ("none", "head", "full", "l2_rope_layers")
ACTIVATIONS = ("silu", "gelu_tanh")
ATTENTION_KINDS = ("global", "local", "chunked", "linear")
LINEAR_KINDS = ("gated_deltanet", "kda", "lightning")  # model.linear.kind
ROPE_KINDS = ("rope", "nope")
ROPE_SCALINGS = ("none", "linear", "llama3", "yarn")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class NormConfig:
  kind: str = "rms"
  eps: float = 1e-6


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  theta: float = 10_000.0
  rotary_dim: int = 0  # leading dims of each head that rotate (partial rotary).
  scaling: str = "none"
  factor: float = 1.0
  original_max_position: int = 8192
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  attention_factor: float = 0.0
  truncate: bool = True  # yarn: floor/ceil the correction range.
  interleave: bool = False  # rotate pairs (2i, 2i+1) instead of (i, i + rotary_dim/2).


@dataclasses.dataclass(frozen=True)
class Fp8:
  """FP8-style linear layers (`modeling/layers/fp8.py`); None in a config = off."""

  grad_dtype: str = "e4m3"  # e4m3 | e5m2: the type gradients are quantized to.
  dot: str = "qdq"  # qdq (dequantize, then dot) | blockwise (fp8 dot per 128 of K).
  pow2_scales: bool = False  # tile scales rounded up to powers of two (ue8m0).


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  scale: float
  window: int = 0  # 0 = global causal attention.
  chunk: int = 0  # > 0: keys only from the query's own block of `chunk` positions.
  rope: RopeConfig | None = None  # None = NoPE.
  qk_norm: str = "none"  # none | head | full | l2 (RMS over head_dim, no scale).
  temperature_scale: float = 0.0  # > 0: q *= 1 + scale*ln(1 + floor((pos+1)/floor)).
  temperature_floor: int = 8192
  norm: NormConfig = NormConfig()
  qkv_bias: bool = False
  out_bias: bool = False
  sinks: bool = False
  softcap: float = 0.0
  kernel: str = "xla"  # attention core: xla | pallas | pallas_interpret (see ATTENTION_KERNELS).
  gate: bool = False  # q_proj emits [query | gate] per head; output *= sigmoid(gate).
  v_norm: bool = False  # values RMS-normed over head_dim without a scale (Gemma 3n).
  # Gemma 3n's KV sharing: "store" keeps this layer's K/V for later layers of its
  # kind (window, chunk); "reuse" has no K/V projections and attends to those.
  kv_share: str = ""
  init_std: float = 0.02
  fp8: Fp8 | None = None  # FP8-style q/k/v/o projections.


@dataclasses.dataclass(frozen=True)
class IndexerConfig:
  """DeepSeek Sparse Attention's lightning indexer (modeling/attention/sparse.py)."""

  num_heads: int  # indexer heads H (V3.2: 64).
  head_dim: int  # D (V3.2: 128).
  topk: int  # keys each query keeps (V3.2: 2048).
  rope: RopeConfig  # RoPE on the leading qk_rope_head_dim dims (half-split unless
  #   rope.interleave: GLM-5 rotates interleaved pairs).
  stage: str = "sparse"  # warmup (dense attention, indexer learns) | sparse (top-k).
  fp8: bool = False  # Hadamard-rotate q/k, then E4M3 with one scale per D-vector.
  loss_weight: float = 1.0  # weight of the indexer's KL in the loss.
  init_std: float = 0.02


@dataclasses.dataclass(frozen=True)
class MlaConfig:
  """Multi-head latent attention (low-rank q, jointly compressed kv, decoupled rope key)."""

  embed_dim: int
  num_heads: int
  q_lora_rank: int  # 0 = plain query projection, no low-rank path.
  kv_lora_rank: int
  qk_nope_head_dim: int
  qk_rope_head_dim: int
  v_head_dim: int
  scale: float  # softmax scale, (nope+rope)**-0.5 times YaRN's mscale**2 when on.
  rope: RopeConfig | None  # rotary_dim = qk_rope_head_dim; None = NoPE (Kimi Linear).
  norm: NormConfig = NormConfig()
  absorbed: bool = False  # latent-space (decode) form: W_UK folded into q, W_UV after.
  window: int = 0
  kernel: str = "xla"  # attention core: xla | pallas | pallas_interpret.
  init_std: float = 0.02
  fp8: Fp8 | None = None  # FP8-style projections (not the absorbed attention core).
  indexer: IndexerConfig | None = None  # DeepSeek Sparse Attention; None = dense.


@dataclasses.dataclass(frozen=True)
class DeltaNetConfig:
  """Linear-attention layer: the gated delta rule (modeling/attention/linear.py),
  gated DeltaNet (Qwen3-Next, a decay per head) or Kimi Delta Attention (Kimi
  Linear, a decay per key channel; q, k and v heads and dims are equal); or
  MiniMax-01's lightning attention (modeling/attention/lightning.py: a fixed decay
  per head that shrinks with depth; heads and dims equal, no conv)."""

  embed_dim: int
  num_k_heads: int  # query/key heads; each serves num_v_heads / num_k_heads value heads.
  num_v_heads: int
  k_head_dim: int
  v_head_dim: int
  conv_kernel: int = 4  # causal depthwise conv over q, k, v.
  chunk: int = 64  # chunk length of the parallel form.
  norm_eps: float = 1e-6
  init_std: float = 0.02
  kind: str = "gated_deltanet"  # gated_deltanet | kda | lightning
  kernel: str = "xla"  # state pass: xla | pallas | pallas_interpret (model.attention_kernel).
  num_layers: int = 1  # the model's depth: lightning's decay rates depend on layer / depth.


@dataclasses.dataclass(frozen=True)
class MoeConfig:
  """Routed experts (+ optional shared experts) replacing a dense MLP."""

  embed_dim: int
  num_experts: int
  top_k: int
  expert_mlp_dim: int
  router: str = "softmax"  # softmax | sigmoid | softmax_topk (softmax over the top-k logits)
  router_softcap: float = 0.0  # > 0: logits = cap*tanh(logits/cap) before scoring.
  norm_topk: bool = True  # renormalise the selected weights to sum to 1.
  n_group: int = 1  # group-limited routing: experts in n_group groups,
  topk_group: int = 1  #   tokens only pick from the topk_group best groups.
  routed_scaling: float = 1.0  # multiplies the routed weights.
  router_bias: bool = False  # learned bias on the router logits.
  aux_free_bias: bool = False  # DeepSeek-V3 selection-only bias (state, not a param).
  num_shared_experts: int = 0
  shared_mlp_dim: int = 0  # width of the (fused) shared expert MLP.
  shared_gate: bool = False  # sigmoid gate on the shared expert output.
  output_scale: float = 1.0  # y = output_scale * (routed + shared).
  activation: str = "silu"  # silu | gelu_tanh | clamped_swiglu (routed and shared experts)
  swiglu_limit: float = 7.0  # clamped_swiglu's clamp.
  expert_bias: bool = False  # biases on the expert projections.
  scale_inputs: bool = False  # the routing weight scales the expert input, not output.
  dispatch: str = "dropless"  # dropless (sort + ragged_dot) | capacity (drop over capacity)
  capacity_factor: float = 1.25
  ep_capacity_factor: float = 0.0  # expert parallel: 0 = exact dropless buffers.
  init_std: float = 0.02
  fp8: Fp8 | None = None  # FP8-style expert and shared-expert matmuls (never the router).


@dataclasses.dataclass(frozen=True)
class MlpConfig:
  embed_dim: int
  mlp_dim: int
  activation: str = "silu"
  bias: bool = False
  init_std: float = 0.02
  fp8: Fp8 | None = None
  # Gemma 3n: keep only the gate pre-activations above mean + std * Phi^-1(sparsity)
  # of each token (a Gaussian estimate of its top (1 - sparsity)), shifted to 0.
  activation_sparsity: float = 0.0


@dataclasses.dataclass(frozen=True)
class AltUpConfig:
  """Gemma 3n's block (modeling/layers/altup.py): the residual stream is
  `num_inputs` streams; each layer runs on the active one (AltUp's predict /
  correct mixes the rest), beside a low-rank LAuReL residual, and adds a gated
  projection of its per-layer embedding (PLE) to the inactive streams."""

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


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  attention: AttentionConfig | MlaConfig | DeltaNetConfig
  mlp: MlpConfig | MoeConfig
  norm: NormConfig
  placement: str = "pre"
  # x <- alpha * x + beta * sublayer(...): (attention alpha, beta, MLP alpha, beta).
  residual: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
  altup: AltUpConfig | None = None  # Gemma 3n's AltUp block instead of the plain one.


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
  z_loss: float = 0.0
  scan_layers: bool = True
  remat: str = "none"
  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32
  seq_aux_weight: float = 0.0  # MoE balance-loss weights, summed over MoE layers.
  switch_aux_weight: float = 0.0
  router_z_weight: float = 0.0
  bias_update_rate: float = 0.0  # aux-loss-free bias step (0 = no update).
  mtp_depth: int = 0  # multi-token prediction modules after the trunk.
  indexer_loss_weight: float = 0.0  # DSA: weight of the indexers' KL (summed over layers).
  num_periods: int = 0  # whole periods from `prefix` on run under the layer scan.
  # Gemma 3n: the residual is `altup_inputs` AltUp streams (0 = one plain stream),
  # and every layer gets its slice of the per-layer embeddings (PLE): a
  # [per_layer_vocab, num_layers * per_layer_dim] table plus a projection of the
  # token embedding. per_layer_on_host keeps the table in host memory.
  altup_inputs: int = 0
  per_layer_vocab: int = 0
  per_layer_dim: int = 0
  per_layer_on_host: bool = False

  @property
  def num_layers(self) -> int:
    return len(self.blocks)


# The attention core: XLA's fused ops, or the Pallas flash-attention kernels
# (pallas_kernels/flash_attention; `pallas_interpret` runs them on CPU, for tests).
ATTENTION_KERNELS = ("xla", "pallas", "pallas_interpret")


def _check(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def _choice(name: str, value, valid):
  _check(value in valid, f"model.{name}={value!r} is not valid; use one of {', '.join(valid)}")


def decoder_config(
  m, param_dtype: str = "float32", compute_dtype: str = "float32", fp8: Fp8 | None = None
) -> DecoderConfig:
  """Validates `config.model` and expands it into per-layer block specs.

  `fp8` (from `trainer/precision.py`) turns on FP8-style linear layers.
  """
  for name in ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "mlp_dim"):
    _check(m[name] > 0, f"model.{name}={m[name]} must be positive")
  _check(
    m.num_heads % m.num_kv_heads == 0,
    f"model.num_kv_heads={m.num_kv_heads} must divide model.num_heads={m.num_heads}; "
    f"pick a divisor of {m.num_heads}",
  )
  head_dim = m.head_dim or m.embed_dim // m.num_heads
  _check(
    m.head_dim > 0 or m.embed_dim % m.num_heads == 0,
    f"model.embed_dim={m.embed_dim} is not divisible by model.num_heads={m.num_heads}; "
    "set model.head_dim explicitly",
  )
  _choice("norm", m.norm, NORMS)
  _choice("norm_placement", m.norm_placement, PLACEMENTS)
  _choice("qk_norm", m.qk_norm, QK_NORMS)
  _choice("activation", m.activation, ACTIVATIONS)
  _choice("rope_scaling.type", m.rope_scaling.type, ROPE_SCALINGS)
  _choice("remat", m.remat, ("none", "full", "save_dots", "save_attention_outputs"))
  _check(
    m.attention == "gqa" or "chunked" not in m.attention_pattern,
    "model.attention_pattern 'chunked' layers need model.attention='gqa'",
  )
  _check(
    m.nope_temperature_floor > 0,
    f"model.nope_temperature_floor={m.nope_temperature_floor} must be positive",
  )
  _check(
    "chunked" not in m.attention_pattern or m.attention_chunk > 0,
    "model.attention_chunk must be > 0 when model.attention_pattern has 'chunked' layers",
  )
  _choice("attention", m.attention, ("gqa", "mla"))
  _choice("attention_kernel", m.attention_kernel, ATTENTION_KERNELS)
  _check(m.mtp.depth >= 0, f"model.mtp.depth={m.mtp.depth} must be >= 0")
  for kind in m.ffn_pattern:
    _choice("ffn_pattern entry", kind, ("dense", "moe"))
  _check(len(m.attention_pattern) > 0, "model.attention_pattern must not be empty")
  _check(len(m.rope_pattern) > 0, "model.rope_pattern must not be empty")
  for kind in m.attention_pattern:
    _choice("attention_pattern entry", kind, ATTENTION_KINDS)
  for kind in m.rope_pattern:
    _choice("rope_pattern entry", kind, ROPE_KINDS)
  _check(
    "local" not in m.attention_pattern or m.sliding_window > 0,
    "model.sliding_window must be > 0 when model.attention_pattern has 'local' layers",
  )
  _check(
    0.0 < m.partial_rotary_factor <= 1.0,
    f"model.partial_rotary_factor={m.partial_rotary_factor} must be in (0, 1]",
  )
  rotary_dim = int(head_dim * m.partial_rotary_factor)
  _check(
    rotary_dim % 2 == 0 and rotary_dim > 0,
    f"model.partial_rotary_factor={m.partial_rotary_factor} gives an odd or empty "
    f"rotary dim {rotary_dim} for head_dim {head_dim}",
  )
  _check(m.logit_scale > 0, f"model.logit_scale={m.logit_scale} must be positive (1.0 = off)")
  _choice("precision.param_dtype", param_dtype, DTYPES)
  _choice("precision.compute_dtype", compute_dtype, DTYPES)

  norm = NormConfig(m.norm, m.norm_eps)
  s = m.rope_scaling
  global_rope = RopeConfig(
    theta=m.rope_theta,
    rotary_dim=rotary_dim,
    scaling=s.type,
    factor=s.factor,
    original_max_position=s.original_max_position,
    low_freq_factor=s.low_freq_factor,
    high_freq_factor=s.high_freq_factor,
    beta_fast=s.beta_fast,
    beta_slow=s.beta_slow,
    attention_factor=s.attention_factor,
    truncate=s.truncate,
    interleave=m.rope_interleave,
  )
  local_rope = (
    RopeConfig(theta=m.local_rope_theta, rotary_dim=rotary_dim, interleave=m.rope_interleave)
    if m.local_rope_theta > 0
    else global_rope
  )
  scale = (m.query_pre_attn_scalar if m.query_pre_attn_scalar > 0 else head_dim) ** -0.5
  mlp = MlpConfig(m.embed_dim, m.mlp_dim, m.activation, m.mlp_bias, m.init_std, fp8)
  moe = _moe_config(m, fp8) if "moe" in m.ffn_pattern else None
  mla = _mla_config(m, global_rope, norm, fp8) if m.attention == "mla" else None
  altup = _altup_config(m, norm)
  kinds = [m.attention_pattern[i % len(m.attention_pattern)] for i in range(m.num_layers)]
  kv_share = _kv_share(m, kinds)
  _check_per_layer(m, "mlp_dims", lambda v: v > 0, "positive widths")
  _check_per_layer(m, "activation_sparsity", lambda v: 0 <= v < 1, "values in [0, 1)")

  blocks = []
  for i in range(m.num_layers):
    kind = m.attention_pattern[i % len(m.attention_pattern)]
    local = kind == "local"
    rope = None
    if m.rope_pattern[i % len(m.rope_pattern)] == "rope":
      rope = local_rope if local else global_rope
    qk_norm = m.qk_norm
    if qk_norm == "l2_rope_layers":
      qk_norm = "l2" if rope else "none"
    attention = mla and dataclasses.replace(
      mla, window=m.sliding_window if local else 0, rope=mla.rope if rope else None
    )
    if kind == "linear":
      attention = _delta_net_config(m)
    attention = attention or AttentionConfig(
      kv_share=kv_share[i],
      v_norm=m.v_norm,
      embed_dim=m.embed_dim,
      num_heads=m.num_heads,
      num_kv_heads=m.num_kv_heads,
      head_dim=head_dim,
      scale=scale,
      window=m.sliding_window if local else 0,
      chunk=m.attention_chunk if kind == "chunked" else 0,
      rope=rope,
      qk_norm=qk_norm,
      temperature_scale=0.0 if rope else m.nope_temperature_scale,
      temperature_floor=m.nope_temperature_floor,
      norm=norm,
      qkv_bias=m.qkv_bias,
      out_bias=m.out_bias,
      sinks=m.attention_sinks,
      softcap=m.attn_logit_softcap,
      kernel=m.attention_kernel,
      gate=m.attention_gate,
      init_std=m.init_std,
      fp8=fp8,
    )
    is_moe = i >= m.first_dense_layers and m.ffn_pattern[i % len(m.ffn_pattern)] == "moe"
    r = m.residual_scale
    residual = (r.linear_alpha, r.linear_beta) if kind == "linear" else (r.attn_alpha, r.attn_beta)
    residual = tuple(float(v) for v in (*residual, r.mlp_alpha, r.mlp_beta))
    ffn = moe if is_moe else _layer_mlp(m, mlp, i)
    blocks.append(BlockSpec(attention, ffn, norm, m.norm_placement, residual, altup))
  first = min(m.first_dense_layers, m.num_layers)
  period = math.lcm(len(m.attention_pattern), len(m.rope_pattern), len(m.ffn_pattern))
  period = max(min(period, m.num_layers - first), 1)
  prefix, num_periods = scanned_run(blocks, period, first)
  return DecoderConfig(
    vocab_size=m.vocab_size,
    embed_dim=m.embed_dim,
    blocks=tuple(blocks),
    period=period,
    prefix=prefix,
    num_periods=num_periods if m.scan_layers else 0,
    altup_inputs=m.altup.num_inputs,
    per_layer_vocab=(m.per_layer_input.vocab_size or m.vocab_size) if altup else 0,
    per_layer_dim=m.per_layer_input.dim if altup else 0,
    per_layer_on_host=bool(altup and m.per_layer_input.host_memory),
    norm=norm,
    tie_embeddings=m.tie_embeddings,
    embed_scale=m.embed_scale,
    final_softcap=m.final_logit_softcap,
    logit_scale=m.logit_scale,
    init_std=m.init_std,
    z_loss=m.z_loss,
    scan_layers=m.scan_layers,
    remat=m.remat,
    param_dtype=jnp.dtype(param_dtype),
    compute_dtype=jnp.dtype(compute_dtype),
    seq_aux_weight=m.moe.seq_aux_weight if moe else 0.0,
    switch_aux_weight=m.moe.switch_aux_weight if moe else 0.0,
    router_z_weight=m.moe.router_z_weight if moe else 0.0,
    bias_update_rate=m.moe.bias_update_rate if moe and m.moe.aux_free_bias else 0.0,
    mtp_depth=m.mtp.depth,
    indexer_loss_weight=m.mla.indexer.loss_weight if mla and mla.indexer else 0.0,
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


def _check_per_layer(m, name: str, valid, what: str):
  values = tuple(m[name])
  _check(
    name != "mlp_dims" or not values or len(values) == m.num_layers,
    f"model.{name} has {len(values)} entries for {m.num_layers} layers; give one per layer "
    "or none",
  )
  _check(all(valid(v) for v in values), f"model.{name}={values} must hold {what}")


def _layer_mlp(m, mlp: MlpConfig, i: int) -> MlpConfig:
  """Layer i's dense FFN: its own width (`mlp_dims`, MatFormer) and gate sparsity."""
  dims, sparsity = tuple(m.mlp_dims), tuple(m.activation_sparsity)
  return dataclasses.replace(
    mlp,
    mlp_dim=dims[i] if dims else mlp.mlp_dim,
    activation_sparsity=float(sparsity[i]) if i < len(sparsity) else 0.0,
  )


def _altup_config(m, norm: NormConfig) -> AltUpConfig | None:
  a = m.altup
  if a.num_inputs == 0:
    return None
  _check(a.num_inputs >= 2, f"model.altup.num_inputs={a.num_inputs} must be 0 (off) or >= 2")
  _check(
    0 <= a.active_idx < a.num_inputs,
    f"model.altup.active_idx={a.active_idx} must be in [0, model.altup.num_inputs)",
  )
  _check(a.laurel_rank > 0, f"model.altup.laurel_rank={a.laurel_rank} must be positive")
  _check(
    m.per_layer_input.dim > 0,
    f"model.per_layer_input.dim={m.per_layer_input.dim} must be positive with model.altup",
  )
  _check(
    m.attention == "gqa"
    and set(m.ffn_pattern) == {"dense"}
    and "linear" not in m.attention_pattern,
    "model.altup (Gemma 3n's block) needs model.attention='gqa', dense FFNs and no linear layers",
  )
  _check(m.mtp.depth == 0, "model.altup does not support model.mtp.depth > 0; set it to 0")
  return AltUpConfig(
    embed_dim=m.embed_dim,
    norm=norm,
    num_inputs=a.num_inputs,
    active_idx=a.active_idx,
    coef_clip=a.coef_clip,
    correct_scale=a.correct_scale,
    laurel_rank=a.laurel_rank,
    per_layer_dim=m.per_layer_input.dim,
    activation=m.activation,
    init_std=m.init_std,
  )


def _kv_share(m, kinds: list) -> list[str]:
  """Per layer "" | "store" | "reuse": the last `kv_shared_layers` layers reuse the
  K/V of the last earlier layer of their kind, which stores them (Gemma 3n)."""
  n, shared = m.num_layers, m.kv_shared_layers
  _check(
    0 <= shared < n, f"model.kv_shared_layers={shared} must be in [0, model.num_layers={n})"
  )
  out = [""] * n
  if not shared:
    return out
  _check(m.attention == "gqa", "model.kv_shared_layers needs model.attention='gqa'")
  first = n - shared
  for i in range(first, n):
    producers = [j for j in range(first) if kinds[j] == kinds[i]]
    _check(
      bool(producers),
      f"model.kv_shared_layers={shared}: layer {i} ({kinds[i]}) has no earlier "
      f"{kinds[i]} layer to take K/V from",
    )
    out[producers[-1]], out[i] = "store", "reuse"
  return out


def _delta_net_config(m) -> DeltaNetConfig:
  n = m.linear
  for name in ("num_k_heads", "num_v_heads", "k_head_dim", "v_head_dim", "conv_kernel", "chunk"):
    _check(n[name] > 0, f"model.linear.{name}={n[name]} must be positive for 'linear' layers")
  _check(n.kind in LINEAR_KINDS, f"model.linear.kind={n.kind!r} must be one of {LINEAR_KINDS}")
  _check(
    n.num_v_heads % n.num_k_heads == 0,
    f"model.linear.num_k_heads={n.num_k_heads} must divide model.linear.num_v_heads="
    f"{n.num_v_heads}",
  )
  _check(
    n.kind == "gated_deltanet" or (n.num_k_heads, n.k_head_dim) == (n.num_v_heads, n.v_head_dim),
    f"model.linear.kind={n.kind!r} needs num_k_heads == num_v_heads and k_head_dim == "
    f"v_head_dim (got {n.num_k_heads}/{n.num_v_heads} heads, dims {n.k_head_dim}/{n.v_head_dim})",
  )
  return DeltaNetConfig(
    embed_dim=m.embed_dim,
    num_k_heads=n.num_k_heads,
    num_v_heads=n.num_v_heads,
    k_head_dim=n.k_head_dim,
    v_head_dim=n.v_head_dim,
    conv_kernel=n.conv_kernel,
    chunk=n.chunk,
    # Lightning's output norm has a fixed eps in the reference (MiniMaxRMSNorm's 1e-6).
    norm_eps=1e-6 if n.kind == "lightning" else m.norm_eps,
    init_std=m.init_std,
    kind=n.kind,
    kernel=m.attention_kernel,
    num_layers=m.num_layers,
  )


def _moe_config(m, fp8: Fp8 | None) -> MoeConfig:
  e = m.moe
  _check(e.num_experts > 0, "model.moe.num_experts must be > 0 when model.ffn_pattern has 'moe'")
  _check(e.expert_mlp_dim > 0, "model.moe.expert_mlp_dim must be > 0 for MoE layers")
  cfg = MoeConfig(
    embed_dim=m.embed_dim,
    num_experts=e.num_experts,
    top_k=e.top_k,
    expert_mlp_dim=e.expert_mlp_dim,
    router=e.router,
    router_softcap=e.router_softcap,
    norm_topk=e.norm_topk,
    n_group=e.n_group,
    topk_group=e.topk_group,
    routed_scaling=e.routed_scaling,
    router_bias=e.router_bias,
    aux_free_bias=e.aux_free_bias,
    num_shared_experts=e.num_shared_experts,
    shared_mlp_dim=e.shared_mlp_dim or e.num_shared_experts * e.expert_mlp_dim,
    shared_gate=e.shared_gate,
    output_scale=e.output_scale,
    activation=e.activation,
    swiglu_limit=e.swiglu_limit,
    expert_bias=e.expert_bias,
    scale_inputs=e.scale_inputs,
    dispatch=e.dispatch,
    capacity_factor=e.capacity_factor,
    ep_capacity_factor=e.ep_capacity_factor,
    init_std=m.init_std,
    fp8=fp8,
  )
  from modeling.moe import router  # noqa: PLC0415 - router imports this module.

  router.validate(cfg)
  return cfg


def _mla_config(m, rope: RopeConfig, norm: NormConfig, fp8: Fp8 | None) -> MlaConfig:
  a = m.mla
  for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
    _check(a[name] > 0, f"model.mla.{name}={a[name]} must be positive when model.attention='mla'")
  _check(
    a.qk_rope_head_dim % 2 == 0, f"model.mla.qk_rope_head_dim={a.qk_rope_head_dim} must be even"
  )
  from modeling.attention.mla import mla_softmax_scale  # noqa: PLC0415 - mla imports this module.

  factor = rope.factor if rope.scaling != "none" else 1.0
  scale = mla_softmax_scale(a.qk_nope_head_dim + a.qk_rope_head_dim, factor, a.mscale_all_dim)
  rope = dataclasses.replace(rope, rotary_dim=a.qk_rope_head_dim)
  return MlaConfig(
    embed_dim=m.embed_dim,
    num_heads=m.num_heads,
    q_lora_rank=a.q_lora_rank,
    kv_lora_rank=a.kv_lora_rank,
    qk_nope_head_dim=a.qk_nope_head_dim,
    qk_rope_head_dim=a.qk_rope_head_dim,
    v_head_dim=a.v_head_dim,
    scale=scale,
    # DeepSeek checkpoints rotate interleaved pairs; the model-level rope_interleave is GQA's.
    rope=dataclasses.replace(rope, interleave=a.rope_interleave),
    norm=NormConfig(norm.kind, 1e-6),  # the latent norms' eps is fixed in the reference models
    absorbed=a.absorbed,
    kernel=m.attention_kernel,
    init_std=m.init_std,
    fp8=fp8,
    indexer=_indexer_config(m, rope),
  )


INDEXER_STAGES = ("warmup", "sparse")


def _indexer_config(m, rope: RopeConfig) -> IndexerConfig | None:
  i = m.mla.indexer
  if i.num_heads == 0:
    return None
  for name in ("num_heads", "head_dim", "topk"):
    _check(i[name] > 0, f"model.mla.indexer.{name}={i[name]} must be positive (num_heads 0 = off)")
  _choice("mla.indexer.stage", i.stage, INDEXER_STAGES)
  _check(
    m.mla.q_lora_rank > 0,
    "model.mla.indexer needs model.mla.q_lora_rank > 0: its queries read the query latent",
  )
  _check(
    i.head_dim >= rope.rotary_dim,
    f"model.mla.indexer.head_dim={i.head_dim} must be >= model.mla.qk_rope_head_dim="
    f"{rope.rotary_dim} (its leading dims take RoPE)",
  )
  _check(
    not i.fp8 or i.head_dim & (i.head_dim - 1) == 0,
    f"model.mla.indexer.fp8 needs a power-of-two head_dim for the Hadamard transform; "
    f"got {i.head_dim}",
  )
  # The indexer's RoPE layout is its own, whatever MLA's: V3.2 rotates half-split
  # pairs (DeepSeek's corrected reference), GLM-5 interleaved ones.
  return IndexerConfig(
    num_heads=i.num_heads,
    head_dim=i.head_dim,
    topk=i.topk,
    rope=dataclasses.replace(rope, interleave=bool(i.rope_interleave)),
    stage=i.stage,
    fp8=i.fp8,
    loss_weight=i.loss_weight,
    init_std=m.init_std,
  )
