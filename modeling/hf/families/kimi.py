"""Kimi Linear: KDA layers with NoPE MLA every 4th layer, DeepSeek-V3 routing."""

from modeling.hf.families.common import (
  COMMON_FIELDS,
  DEEPSEEK_MOE_MODEL,
  FULL,
  LINEAR,
  LLAMA_DEFAULTS,
  MLA_FIELDS,
  MOE,
  Family,
  mlp_layer_types,
)
from modeling.hf.tensors import AS_IS, CONV, HEADS_4D, PRE_NORMS, TRANSPOSE


def _kimi_linear_layer_types(hf):
  """`layer_types` when saved; else hub files' 1-based `linear_attn_config.full_attn_layers`;
  else HF's default (softmax at every 4th layer from layer 4, 0-based)."""
  if hf.get("layer_types"):
    return hf["layer_types"]
  n, full = hf["num_hidden_layers"], (hf.get("linear_attn_config") or {}).get("full_attn_layers")
  if full is not None:
    return [FULL if i + 1 in full else LINEAR for i in range(n)]
  return [FULL if i and i % 4 == 0 else LINEAR for i in range(n)]


def _kimi_linear_derived(hf):
  """KDA sizes: flat keys as HF saves them, or hub files' `linear_attn_config`."""
  nested = hf.get("linear_attn_config") or {}
  heads = nested.get("num_heads", hf["linear_num_heads"])
  dim = nested.get("head_dim", hf["linear_head_dim"])
  return {
    "linear.kind": "kda",
    "linear.num_k_heads": heads,
    "linear.num_v_heads": heads,
    "linear.k_head_dim": dim,
    "linear.v_head_dim": dim,
    "linear.conv_kernel": nested.get("short_conv_kernel_size", hf["linear_conv_kernel_dim"]),
  }


def _kimi_linear_layout(m, lay):
  return {
    "layer_types": lay.types,
    "mlp_layer_types": ["sparse" if f == MOE else "dense" for f in lay.ffns],
    "linear_num_heads": m.linear.num_v_heads,
    "linear_head_dim": m.linear.v_head_dim,
    "linear_conv_kernel_dim": m.linear.conv_kernel,
  }


# Kimi Linear: KDA layers under `self_attn.` (q/k/v/o projections as above, one
# conv per q, k, v); routed experts in Mixtral's w1 (gate), w3 (up), w2 (down).
KIMI_LINEAR_WEIGHTS = {
  "attn.q_conv": ("self_attn.q_conv1d.weight", CONV),
  "attn.k_conv": ("self_attn.k_conv1d.weight", CONV),
  "attn.v_conv": ("self_attn.v_conv1d.weight", CONV),
  "attn.f_a_proj": ("self_attn.f_a_proj.weight", TRANSPOSE),
  "attn.f_b_proj": ("self_attn.f_b_proj.weight", TRANSPOSE),
  "attn.b_proj": ("self_attn.b_proj.weight", TRANSPOSE),
  "attn.g_a_proj": ("self_attn.g_a_proj.weight", TRANSPOSE),
  "attn.g_b_proj": ("self_attn.g_b_proj.weight", TRANSPOSE),
  "attn.A_log": ("self_attn.A_log", HEADS_4D),
  "attn.dt_bias": ("self_attn.dt_bias", AS_IS),
  "attn.norm.scale": ("self_attn.o_norm.weight", AS_IS),
  "mlp.experts.gate_proj": ("mlp.experts.{x}.w1.weight", TRANSPOSE),
  "mlp.experts.up_proj": ("mlp.experts.{x}.w3.weight", TRANSPOSE),
  "mlp.experts.down_proj": ("mlp.experts.{x}.w2.weight", TRANSPOSE),
}


FAMILIES = {
  # Kimi Linear: KDA layers with NoPE MLA every 4th layer, DeepSeek-V3 routing
  # (sigmoid + correction bias) and a shared expert after a dense first layer.
  "kimi_linear": Family(
    name="kimi_linear",
    architecture="KimiLinearForCausalLM",
    layout=_kimi_linear_layout,
    fields={
      **COMMON_FIELDS,
      **{f: k for f, k in MLA_FIELDS.items() if f != "mla.rope_interleave"},
      "moe.num_experts": "num_experts",
      "moe.top_k": "num_experts_per_token",
      "moe.expert_mlp_dim": "moe_intermediate_size",
      "moe.norm_topk": "moe_renormalize",
      "moe.n_group": "num_expert_group",
      "moe.topk_group": "topk_group",
      "moe.routed_scaling": "routed_scaling_factor",
      "moe.num_shared_experts": "num_shared_experts",
    },
    defaults=dict(
      LLAMA_DEFAULTS,
      vocab_size=163_840,
      rms_norm_eps=1e-5,
      kv_lora_rank=512,
      q_lora_rank=None,
      qk_nope_head_dim=128,
      qk_rope_head_dim=64,
      v_head_dim=128,
      num_experts=256,
      num_experts_per_token=8,
      moe_intermediate_size=1024,
      moe_renormalize=True,
      num_expert_group=1,
      topk_group=1,
      routed_scaling_factor=2.446,
      num_shared_experts=1,
      first_k_dense_replace=1,
      linear_num_heads=32,
      linear_head_dim=128,
      linear_conv_kernel_dim=4,
    ),
    # HF's config class maps these names onto the ones `fields` reads.
    aliases={
      "num_local_experts": "num_experts",
      "num_experts_per_tok": "num_experts_per_token",
      "norm_topk_prob": "moe_renormalize",
      "n_group": "num_expert_group",
      "n_shared_experts": "num_shared_experts",
    },
    model=dict(DEEPSEEK_MOE_MODEL, attention="mla"),
    derived=_kimi_linear_derived,
    norms=PRE_NORMS,
    layer_types=_kimi_linear_layer_types,
    rope_layers=lambda hf: [False] * hf["num_hidden_layers"],  # MLA without RoPE
    ffn_layers=mlp_layer_types,
    weights=KIMI_LINEAR_WEIGHTS,
    # Hub files name MoE layers `block_sparse_moe.` and dense ones `mlp.`.
    renames=((".block_sparse_moe.", ".mlp."),),
    required=dict(attention_bias=False, hidden_act="silu"),
  ),
}
