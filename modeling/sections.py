"""`config.model`'s sub-sections -> the components' own configs, each checked once.

One function per component: it reads its section of `config.model` (and the few
shared fields it needs), checks it, and returns the component's frozen
dataclass. `modeling/config.py` calls these per layer; components never see the
ConfigDict. Every error names the field and what would be valid.
"""

import dataclasses

from modeling.attention import linear, sparse
from modeling.attention.dot_product import AttentionConfig
from modeling.attention.linear import DeltaNetConfig
from modeling.attention.mla import MlaConfig, mla_softmax_scale
from modeling.attention.sparse import IndexerConfig
from modeling.layers.altup import AltUpConfig
from modeling.layers.fp8 import Fp8
from modeling.layers.mlp import MlpConfig
from modeling.layers.norms import NormConfig
from modeling.layers.rope import RopeConfig
from modeling.moe.config import MoeConfig, validate


def check(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def choice(name: str, value, valid):
  check(value in valid, f"{name}={value!r} is not valid; use one of {', '.join(valid)}")


def ropes(m, rotary_dim: int) -> tuple[RopeConfig, RopeConfig]:
  """(global, local) RoPE: `local` layers may take their own theta without scaling."""
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
  if m.local_rope_theta <= 0:
    return global_rope, global_rope
  local = RopeConfig(theta=m.local_rope_theta, rotary_dim=rotary_dim, interleave=m.rope_interleave)
  return global_rope, local


def attention(m, head_dim: int, norm: NormConfig, fp8: Fp8 | None, init_std: float):
  """The GQA/MHA layer every softmax layer starts from (per-layer fields: window,
  chunk, rope, qk_norm, temperature, kv_share, kernel)."""
  scale = (m.query_pre_attn_scalar if m.query_pre_attn_scalar > 0 else head_dim) ** -0.5
  return AttentionConfig(
    v_norm=m.v_norm,
    embed_dim=m.embed_dim,
    num_heads=m.num_heads,
    num_kv_heads=m.num_kv_heads,
    head_dim=head_dim,
    scale=scale,
    temperature_floor=m.nope_temperature_floor,
    norm=norm,
    qkv_bias=m.qkv_bias,
    out_bias=m.out_bias,
    sinks=m.attention_sinks,
    softcap=m.attn_logit_softcap,
    gate=m.attention_gate,
    init_std=init_std,
    fp8=fp8,
  )


def mla(m, rope: RopeConfig, norm: NormConfig, fp8, init_std, indexer_stage) -> MlaConfig:
  a = m.mla
  for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
    check(a[name] > 0, f"model.mla.{name}={a[name]} must be positive when model.attention='mla'")
  check(
    a.qk_rope_head_dim % 2 == 0, f"model.mla.qk_rope_head_dim={a.qk_rope_head_dim} must be even"
  )
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
    init_std=init_std,
    fp8=fp8,
    indexer=indexer(m, rope, init_std, indexer_stage),
  )


def indexer(m, rope: RopeConfig, init_std: float, stage: str) -> IndexerConfig | None:
  i = m.mla.indexer
  if i.num_heads == 0:
    return None
  for name in ("num_heads", "head_dim", "topk"):
    check(i[name] > 0, f"model.mla.indexer.{name}={i[name]} must be positive (num_heads 0 = off)")
  choice("objective.indexer_stage", stage, sparse.STAGES)
  check(
    m.mla.q_lora_rank > 0,
    "model.mla.indexer needs model.mla.q_lora_rank > 0: its queries read the query latent",
  )
  check(
    i.head_dim >= rope.rotary_dim,
    f"model.mla.indexer.head_dim={i.head_dim} must be >= model.mla.qk_rope_head_dim="
    f"{rope.rotary_dim} (its leading dims take RoPE)",
  )
  check(
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
    stage=stage,
    fp8=i.fp8,
    init_std=init_std,
  )


def delta_net(m, init_std: float) -> DeltaNetConfig:
  n = m.linear
  for name in ("num_k_heads", "num_v_heads", "k_head_dim", "v_head_dim", "conv_kernel", "chunk"):
    check(n[name] > 0, f"model.linear.{name}={n[name]} must be positive for 'linear' layers")
  choice("model.linear.kind", n.kind, linear.KINDS)
  check(
    n.num_v_heads % n.num_k_heads == 0,
    f"model.linear.num_k_heads={n.num_k_heads} must divide model.linear.num_v_heads="
    f"{n.num_v_heads}",
  )
  check(
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
    init_std=init_std,
    kind=n.kind,
    num_layers=m.num_layers,
  )


def moe(m, fp8: Fp8 | None, init_std: float, dispatch: dict) -> MoeConfig:
  """dispatch: {dispatch, capacity_factor, ep_capacity_factor} from config.compute."""
  e = m.moe
  check(e.num_experts > 0, "model.moe.num_experts must be > 0 when model.ffn_pattern has 'moe'")
  check(e.expert_mlp_dim > 0, "model.moe.expert_mlp_dim must be > 0 for MoE layers")
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
    init_std=init_std,
    fp8=fp8,
    **dispatch,
  )
  validate(cfg)
  return cfg


def layer_mlp(m, mlp: MlpConfig, i: int) -> MlpConfig:
  """Layer i's dense FFN: its own width (`mlp_dims`, MatFormer) and gate sparsity."""
  dims, sparsity = tuple(m.mlp_dims), tuple(m.activation_sparsity)
  return dataclasses.replace(
    mlp,
    mlp_dim=dims[i] if dims else mlp.mlp_dim,
    activation_sparsity=float(sparsity[i]) if i < len(sparsity) else 0.0,
  )


def check_per_layer(m, name: str, valid, what: str):
  values = tuple(m[name])
  check(
    name != "mlp_dims" or not values or len(values) == m.num_layers,
    f"model.{name} has {len(values)} entries for {m.num_layers} layers; give one per layer or none",
  )
  check(all(valid(v) for v in values), f"model.{name}={values} must hold {what}")


def altup(m, norm: NormConfig, init_std: float) -> AltUpConfig | None:
  a = m.altup
  if a.num_inputs == 0:
    return None
  check(a.num_inputs >= 2, f"model.altup.num_inputs={a.num_inputs} must be 0 (off) or >= 2")
  check(
    0 <= a.active_idx < a.num_inputs,
    f"model.altup.active_idx={a.active_idx} must be in [0, model.altup.num_inputs)",
  )
  check(a.laurel_rank > 0, f"model.altup.laurel_rank={a.laurel_rank} must be positive")
  check(
    m.per_layer_input.dim > 0,
    f"model.per_layer_input.dim={m.per_layer_input.dim} must be positive with model.altup",
  )
  check(
    m.attention == "gqa"
    and set(m.ffn_pattern) == {"dense"}
    and "linear" not in m.attention_pattern,
    "model.altup (Gemma 3n's block) needs model.attention='gqa', dense FFNs and no linear layers",
  )
  check(m.mtp.depth == 0, "model.altup does not support model.mtp.depth > 0; set it to 0")
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
    init_std=init_std,
  )


def kv_share(m, kinds: list) -> list[str]:
  """Per layer "" | "store" | "reuse": the last `kv_shared_layers` layers reuse the
  K/V of the last earlier layer of their kind, which stores them (Gemma 3n)."""
  n, shared = m.num_layers, m.kv_shared_layers
  check(0 <= shared < n, f"model.kv_shared_layers={shared} must be in [0, model.num_layers={n})")
  out = [""] * n
  if not shared:
    return out
  check(m.attention == "gqa", "model.kv_shared_layers needs model.attention='gqa'")
  first = n - shared
  for i in range(first, n):
    producers = [j for j in range(first) if kinds[j] == kinds[i]]
    check(
      bool(producers),
      f"model.kv_shared_layers={shared}: layer {i} ({kinds[i]}) has no earlier "
      f"{kinds[i]} layer to take K/V from",
    )
    out[producers[-1]], out[i] = "store", "reuse"
  return out
