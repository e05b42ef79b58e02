"""GLM-4.5 MoE (HF `glm4_moe`): DeepSeek-style routing after dense first layers."""

from modeling.hf.families.common import (
  COMMON_FIELDS,
  DEEPSEEK_MOE_FIELDS,
  DEEPSEEK_MOE_MODEL,
  LLAMA_DEFAULTS,
  Family,
  first_k_dense_layers,
  first_k_dense_layout,
)
from modeling.hf.tensors import PRE_NORMS

FAMILIES = {
  "glm4_moe": Family(
    name="glm4_moe",
    architecture="Glm4MoeForCausalLM",
    layout=first_k_dense_layout,
    fields={
      **COMMON_FIELDS,
      **DEEPSEEK_MOE_FIELDS,
      "qkv_bias": "attention_bias",  # o_proj never has a bias.
      "qk_norm": ("use_qk_norm", {True: "head", False: "none"}),
    },
    defaults=dict(
      LLAMA_DEFAULTS,
      rms_norm_eps=1e-5,
      use_qk_norm=False,
      partial_rotary_factor=0.5,
      n_routed_experts=128,
      num_experts_per_tok=8,
      moe_intermediate_size=1408,
      norm_topk_prob=True,
      n_group=1,
      topk_group=1,
      routed_scaling_factor=1.0,
      n_shared_experts=1,
      first_k_dense_replace=1,
      max_position_embeddings=131_072,
    ),
    model=DEEPSEEK_MOE_MODEL,
    norms=PRE_NORMS,
    ffn_layers=first_k_dense_layers,
    extra_layers_key="num_nextn_predict_layers",
    partial_rotary=True,
    required=dict(hidden_act="silu"),
  ),
}
