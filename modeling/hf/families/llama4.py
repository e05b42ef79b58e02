"""Llama 4 (text): chunked RoPE layers, global NoPE layers, MoE with a shared expert."""

from modeling.hf.families.common import (
  ATTENTION_BIAS,
  CHUNKED,
  COMMON_FIELDS,
  DENSE,
  FULL,
  LLAMA_DEFAULTS,
  MOE,
  Family,
  no_rope_layers,
)
from modeling.hf.tensors import AS_IS, FIRST, PRE_NORMS, SECOND, TRANSPOSE


def _llama4_layer_types(hf):  # RoPE layers attend within chunks, NoPE layers globally.
  return hf.get("layer_types") or [CHUNKED if r else FULL for r in no_rope_layers(hf)]


def _llama4_ffn_layers(hf):  # `moe_layers`, else MoE every `interleave_moe_layer_step`.
  n, step = hf["num_hidden_layers"], hf["interleave_moe_layer_step"]
  moe = hf.get("moe_layers")
  moe = set(range(step - 1, n, step) if moe is None else moe)
  return [MOE if i in moe else DENSE for i in range(n)]


def _llama4_temperature(hf):
  return {
    "nope_temperature_scale": float(hf["attn_scale"]) if hf["attn_temperature_tuning"] else 0.0
  }


def _llama4_layout(m, lay):
  return {
    "no_rope_layers": [int(r) for r in lay.ropes],
    "layer_types": lay.types,
    "attention_chunk_size": m.attention_chunk or None,
    "moe_layers": [i for i, f in enumerate(lay.ffns) if f == MOE],
    "attn_temperature_tuning": m.nope_temperature_scale > 0,
    "attn_scale": m.nope_temperature_scale or 0.1,
  }


# Llama 4 names the FFN `feed_forward`; its experts are two [E, in, out] tensors.
LLAMA4_WEIGHTS = {
  "mlp.gate_proj": ("feed_forward.gate_proj.weight", TRANSPOSE),
  "mlp.up_proj": ("feed_forward.up_proj.weight", TRANSPOSE),
  "mlp.down_proj": ("feed_forward.down_proj.weight", TRANSPOSE),
  "mlp.router.kernel": ("feed_forward.router.weight", TRANSPOSE),
  "mlp.experts.gate_proj": ("feed_forward.experts.gate_up_proj", FIRST),  # [E, e, 2f]
  "mlp.experts.up_proj": ("feed_forward.experts.gate_up_proj", SECOND),
  "mlp.experts.down_proj": ("feed_forward.experts.down_proj", AS_IS),  # [E, f, e]
  "mlp.shared.gate_proj": ("feed_forward.shared_expert.gate_proj.weight", TRANSPOSE),
  "mlp.shared.up_proj": ("feed_forward.shared_expert.up_proj.weight", TRANSPOSE),
  "mlp.shared.down_proj": ("feed_forward.shared_expert.down_proj.weight", TRANSPOSE),
}


# Multimodal checkpoints whose language model we load: model_type -> (the
# config.json key of the text config, the prefix of the text model's tensors).
TEXT_MODELS = {"llama4": ("text_config", "language_model.")}


FAMILIES = {
  "llama4_text": Family(
    name="llama4",
    architecture="Llama4ForCausalLM",
    layout=_llama4_layout,
    fields={
      **COMMON_FIELDS,
      **ATTENTION_BIAS,
      "mlp_dim": "intermediate_size_mlp",  # dense layers; experts use intermediate_size.
      "moe.num_experts": "num_local_experts",
      "moe.top_k": "num_experts_per_tok",
      "moe.expert_mlp_dim": "intermediate_size",
      "moe.shared_mlp_dim": "intermediate_size",
      "qk_norm": ("use_qk_norm", {True: "l2_rope_layers", False: "none"}),
      "nope_temperature_floor": "floor_scale",
    },
    defaults=dict(
      LLAMA_DEFAULTS,
      rms_norm_eps=1e-5,
      head_dim=128,
      intermediate_size=8192,
      intermediate_size_mlp=16384,
      num_local_experts=16,
      num_experts_per_tok=1,
      moe_layers=None,
      interleave_moe_layer_step=1,
      use_qk_norm=True,
      no_rope_layers=None,
      no_rope_layer_interval=4,
      attention_chunk_size=8192,
      attn_temperature_tuning=True,
      floor_scale=8192,
      attn_scale=0.1,
      rope_theta=500_000.0,
      max_position_embeddings=131_072,
    ),
    # Meta's complex-number RoPE rotates (2i, 2i+1); the router is a sigmoid over
    # the top-1 logit that scales the expert's input; one always-on shared expert.
    model={
      "rope_interleave": True,
      "moe.router": "sigmoid",
      "moe.norm_topk": False,
      "moe.scale_inputs": True,
      "moe.num_shared_experts": 1,
    },
    norms=PRE_NORMS,
    layer_types=_llama4_layer_types,
    rope_layers=no_rope_layers,
    ffn_layers=_llama4_ffn_layers,
    weights=LLAMA4_WEIGHTS,
    derived=_llama4_temperature,
    required=dict(hidden_act="silu"),
    aliases={"num_experts": "num_local_experts"},
  ),
}
