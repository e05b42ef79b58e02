"""The Qwen lineage: Qwen2.5 and Qwen3 dense, Qwen2-MoE and Qwen3-MoE, Qwen3-Next."""

from modeling.hf.families.common import (
  ATTENTION_BIAS,
  COMMON_FIELDS,
  DENSE,
  FULL,
  LINEAR,
  LLAMA_DEFAULTS,
  MOE,
  QWEN_MOE_FIELDS,
  SLIDING,
  Family,
)
from modeling.hf.tensors import PRE_NORMS, TRANSPOSE


def _qwen3_layer_types(hf):
  if hf.get("layer_types"):
    return hf["layer_types"]
  window = hf["sliding_window"] if hf["use_sliding_window"] else None
  return [
    SLIDING if window and i >= hf["max_window_layers"] else FULL
    for i in range(hf["num_hidden_layers"])
  ]


def _qwen3_moe_layer_types(hf):  # HF Qwen3-MoE windows every layer (no max_window_layers).
  window = hf["use_sliding_window"] and hf["sliding_window"]
  return [SLIDING if window else FULL] * hf["num_hidden_layers"]


def _qwen2_moe_layer_types(
  hf,
):  # HF's default: a window on the even layers below max_window_layers.
  if hf.get("layer_types"):
    return hf["layer_types"]
  window = hf["use_sliding_window"] and hf["sliding_window"]
  return [
    SLIDING if window and i % 2 == 0 and i < hf["max_window_layers"] else FULL
    for i in range(hf["num_hidden_layers"])
  ]


def _qwen3_moe_ffn_layers(hf):  # MoE every `decoder_sparse_step`, minus `mlp_only_layers`.
  step, dense = hf["decoder_sparse_step"], set(hf["mlp_only_layers"] or ())
  return [
    MOE if i not in dense and hf["num_experts"] > 0 and (i + 1) % step == 0 else DENSE
    for i in range(hf["num_hidden_layers"])
  ]


def _qwen3_next_layer_types(hf):  # every `full_attention_interval`-th layer is softmax attention
  if hf.get("layer_types"):
    return hf["layer_types"]
  every = hf["full_attention_interval"]
  return [FULL if (i + 1) % every == 0 else LINEAR for i in range(hf["num_hidden_layers"])]


def _qwen3_layout(m, lay):
  return {"use_sliding_window": SLIDING in lay.types, "layer_types": lay.types}


def _qwen2_moe_layout(m, lay):
  return {**_qwen3_moe_layout(m, lay), "layer_types": lay.types}


def _qwen3_moe_layout(m, lay):
  return {
    "use_sliding_window": SLIDING in lay.types,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [i for i, f in enumerate(lay.ffns) if f == DENSE],
  }


def _qwen3_next_layout(m, lay):
  return {
    "layer_types": lay.types,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [i for i, f in enumerate(lay.ffns) if f == DENSE],
  }


# Qwen-MoE's gated shared expert (`shared_expert` + `shared_expert_gate`).
QWEN_SHARED_EXPERT_WEIGHTS = {
  "mlp.shared.gate_proj": ("mlp.shared_expert.gate_proj.weight", TRANSPOSE),
  "mlp.shared.up_proj": ("mlp.shared_expert.up_proj.weight", TRANSPOSE),
  "mlp.shared.down_proj": ("mlp.shared_expert.down_proj.weight", TRANSPOSE),
  "mlp.shared_gate": ("mlp.shared_expert_gate.weight", TRANSPOSE),
}


FAMILIES = {
  "qwen3": Family(
    name="qwen3",
    architecture="Qwen3ForCausalLM",
    layout=_qwen3_layout,
    fields={**COMMON_FIELDS, **ATTENTION_BIAS},
    defaults=dict(
      LLAMA_DEFAULTS,
      head_dim=128,
      use_sliding_window=False,
      sliding_window=4096,
      max_window_layers=28,
      max_position_embeddings=32768,
    ),
    model=dict(qk_norm="head"),
    norms=PRE_NORMS,
    layer_types=_qwen3_layer_types,
  ),
  # Qwen2.5: bias on q/k/v only (HF hard-codes it), Qwen3's window layout, no QK-norm.
  "qwen2": Family(
    name="qwen2",
    architecture="Qwen2ForCausalLM",
    layout=_qwen3_layout,
    fields=COMMON_FIELDS,
    defaults=dict(
      LLAMA_DEFAULTS,
      rms_norm_eps=1e-6,
      use_sliding_window=False,
      sliding_window=4096,
      max_window_layers=28,
      max_position_embeddings=32768,
    ),
    model=dict(qkv_bias=True, out_bias=False),
    norms=PRE_NORMS,
    layer_types=_qwen3_layer_types,
  ),
  "qwen3_moe": Family(
    name="qwen3_moe",
    architecture="Qwen3MoeForCausalLM",
    layout=_qwen3_moe_layout,
    fields={
      **COMMON_FIELDS,
      **ATTENTION_BIAS,
      **QWEN_MOE_FIELDS,
    },
    defaults=dict(
      LLAMA_DEFAULTS,
      use_sliding_window=False,
      sliding_window=4096,
      max_position_embeddings=32768,
      decoder_sparse_step=1,
      mlp_only_layers=None,
      norm_topk_prob=False,  # the class default; released checkpoints set True.
    ),
    model={"qk_norm": "head", "moe.router": "softmax"},
    norms=PRE_NORMS,
    layer_types=_qwen3_moe_layer_types,
    ffn_layers=_qwen3_moe_ffn_layers,
    required=dict(hidden_act="silu"),  # routed experts are SwiGLU.
    aliases={"num_local_experts": "num_experts"},
  ),
  # Qwen2-MoE (Qwen1.5 / Qwen2 / Qwen2.5 MoE): q/k/v bias, softmax-routed fine-grained
  # experts (top-k not renormalised by default) plus one shared expert behind a sigmoid gate.
  "qwen2_moe": Family(
    name="qwen2_moe",
    architecture="Qwen2MoeForCausalLM",
    layout=_qwen2_moe_layout,
    fields={
      **COMMON_FIELDS,
      "qkv_bias": "qkv_bias",
      **QWEN_MOE_FIELDS,
      "moe.shared_mlp_dim": "shared_expert_intermediate_size",
    },
    defaults=dict(
      LLAMA_DEFAULTS,
      qkv_bias=True,
      use_sliding_window=False,
      sliding_window=4096,
      max_window_layers=28,
      max_position_embeddings=32768,
      decoder_sparse_step=1,
      mlp_only_layers=None,
      norm_topk_prob=False,
      num_experts=60,
      num_experts_per_tok=4,
      moe_intermediate_size=1408,
      shared_expert_intermediate_size=5632,
    ),
    model={
      "out_bias": False,
      "moe.router": "softmax",
      "moe.num_shared_experts": 1,
      "moe.shared_gate": True,
    },
    norms=PRE_NORMS,
    layer_types=_qwen2_moe_layer_types,
    ffn_layers=_qwen3_moe_ffn_layers,
    weights=QWEN_SHARED_EXPERT_WEIGHTS,
    required=dict(hidden_act="silu"),
  ),
  # Qwen3-Next: gated DeltaNet layers with gated softmax attention every 4th layer,
  # (1 + w) RMSNorms, partial RoPE, softmax-routed experts plus a gated shared expert.
  "qwen3_next": Family(
    name="qwen3_next",
    architecture="Qwen3NextForCausalLM",
    layout=_qwen3_next_layout,
    fields={
      **COMMON_FIELDS,
      **QWEN_MOE_FIELDS,
      "moe.shared_mlp_dim": "shared_expert_intermediate_size",
      "linear.num_k_heads": "linear_num_key_heads",
      "linear.num_v_heads": "linear_num_value_heads",
      "linear.k_head_dim": "linear_key_head_dim",
      "linear.v_head_dim": "linear_value_head_dim",
      "linear.conv_kernel": "linear_conv_kernel_dim",
    },
    defaults=dict(
      LLAMA_DEFAULTS,
      head_dim=256,
      max_position_embeddings=32768,
      decoder_sparse_step=1,
      mlp_only_layers=None,
      norm_topk_prob=True,
      full_attention_interval=4,
      linear_conv_kernel_dim=4,
      linear_key_head_dim=128,
      linear_value_head_dim=128,
      linear_num_key_heads=16,
      linear_num_value_heads=32,
      moe_intermediate_size=512,
      shared_expert_intermediate_size=512,
      num_experts_per_tok=10,
      num_experts=512,
    ),
    model={
      "norm": "rms_one_plus",
      "qk_norm": "head",
      "attention_gate": True,
      "moe.router": "softmax",
      "moe.num_shared_experts": 1,
      "moe.shared_gate": True,
    },
    norms=PRE_NORMS,
    layer_types=_qwen3_next_layer_types,
    ffn_layers=_qwen3_moe_ffn_layers,
    weights=QWEN_SHARED_EXPERT_WEIGHTS,
    partial_rotary=True,
    required=dict(hidden_act="silu", attention_bias=False),
    ignored_prefixes=("mtp.",),
  ),
}
