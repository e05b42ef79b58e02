"""gpt-oss: attention sinks, alternating windows, clamped SwiGLU experts."""

from modeling.hf.families.common import (
  ATTENTION_BIAS,
  COMMON_FIELDS,
  FULL,
  LLAMA_DEFAULTS,
  SLIDING,
  Family,
  all_moe,
  layer_types_layout,
)
from modeling.hf.tensors import AS_IS, EVEN, ODD, PRE_NORMS, TRANSPOSE


def _gpt_oss_layer_types(hf):  # HF default: even layers slide, odd layers are full.
  return hf.get("layer_types") or [
    SLIDING if (i + 1) % 2 else FULL for i in range(hf["num_hidden_layers"])
  ]


# gpt-oss stores all experts in one tensor per projection, already [in, out].
GPT_OSS_WEIGHTS = {
  "mlp.router.kernel": ("mlp.router.weight", TRANSPOSE),
  "mlp.router.bias": ("mlp.router.bias", AS_IS),
  "mlp.experts.gate_proj": ("mlp.experts.gate_up_proj", EVEN),  # [E, e, 2f]
  "mlp.experts.up_proj": ("mlp.experts.gate_up_proj", ODD),
  "mlp.experts.down_proj": ("mlp.experts.down_proj", AS_IS),  # [E, f, e]
  "mlp.experts.gate_bias": ("mlp.experts.gate_up_proj_bias", EVEN),  # [E, 2f]
  "mlp.experts.up_bias": ("mlp.experts.gate_up_proj_bias", ODD),
  "mlp.experts.down_bias": ("mlp.experts.down_proj_bias", AS_IS),
}


FAMILIES = {
  "gpt_oss": Family(
    name="gpt_oss",
    architecture="GptOssForCausalLM",
    layout=layer_types_layout,
    fields={
      **COMMON_FIELDS,
      **ATTENTION_BIAS,
      "moe.num_experts": "num_local_experts",
      "moe.top_k": "num_experts_per_tok",
      "moe.expert_mlp_dim": "intermediate_size",
      "moe.swiglu_limit": "swiglu_limit",
    },
    defaults=dict(
      LLAMA_DEFAULTS,
      rms_norm_eps=1e-5,
      head_dim=64,
      attention_bias=True,
      sliding_window=128,
      num_experts_per_tok=4,
      rope_theta=150_000.0,
      max_position_embeddings=131_072,
      swiglu_alpha=1.702,
      swiglu_limit=7.0,
      rope_scaling=dict(  # HF's default when config.json names no rope scaling.
        rope_type="yarn",
        factor=32.0,
        beta_fast=32.0,
        beta_slow=1.0,
        truncate=False,
        original_max_position_embeddings=4096,
      ),
    ),
    model={
      "attention_sinks": True,
      "moe.router": "softmax_topk",
      "moe.router_bias": True,
      "moe.activation": "clamped_swiglu",
      "moe.expert_bias": True,
    },
    norms=PRE_NORMS,
    layer_types=_gpt_oss_layer_types,
    ffn_layers=all_moe,
    weights=GPT_OSS_WEIGHTS,
    aliases={"num_experts": "num_local_experts"},
    # Our clamped SwiGLU hard-codes alpha 1.702 (no config.model field).
    required=dict(swiglu_alpha=1.702),
  ),
}
