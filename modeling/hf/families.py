"""Hugging Face name maps: one `Family` record per HF `model_type`.

A family is data: which config.json keys fill which `config.model` fields,
the HF defaults for keys a config.json may omit, the `config.model` fields the
HF modeling code hard-codes, the names of the per-layer norm tensors, and two
small rules that give each layer's attention kind and positional kind.
`loader.py` holds the only logic; nothing there names a family.
"""

import dataclasses
from typing import Callable

FULL, SLIDING = "full_attention", "sliding_attention"

# config.model field <- config.json key, shared by every family.
COMMON_FIELDS = {
  "vocab_size": "vocab_size",
  "embed_dim": "hidden_size",
  "num_layers": "num_hidden_layers",
  "num_heads": "num_attention_heads",
  "num_kv_heads": "num_key_value_heads",  # absent or null -> num_heads (MHA).
  "head_dim": "head_dim",  # absent or null -> embed_dim // num_heads.
  "mlp_dim": "intermediate_size",
  "norm_eps": "rms_norm_eps",
  "tie_embeddings": "tie_word_embeddings",
  "activation": "hidden_act",
}
# Llama-style q/k/v/o projections all carry a bias when `attention_bias` is set.
ATTENTION_BIAS = {"qkv_bias": "attention_bias", "out_bias": "attention_bias"}

# HF `hidden_act` -> config.model.activation.
ACTIVATIONS = {
  "silu": "silu",
  "swish": "silu",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_new": "gelu_tanh",
}

# Our block param path -> (HF name under `model.layers.{i}.`, is a torch Linear
# weight [out, in] that must be transposed). Paths our model lacks (biases,
# QK-norms when off) are never asked for.
ATTENTION_MLP_WEIGHTS = {
  "attn.q_proj": ("self_attn.q_proj.weight", True),
  "attn.k_proj": ("self_attn.k_proj.weight", True),
  "attn.v_proj": ("self_attn.v_proj.weight", True),
  "attn.o_proj": ("self_attn.o_proj.weight", True),
  "attn.q_bias": ("self_attn.q_proj.bias", False),
  "attn.k_bias": ("self_attn.k_proj.bias", False),
  "attn.v_bias": ("self_attn.v_proj.bias", False),
  "attn.o_bias": ("self_attn.o_proj.bias", False),
  "attn.q_norm.scale": ("self_attn.q_norm.weight", False),
  "attn.k_norm.scale": ("self_attn.k_norm.weight", False),
  "mlp.gate_proj": ("mlp.gate_proj.weight", True),
  "mlp.up_proj": ("mlp.up_proj.weight", True),
  "mlp.down_proj": ("mlp.down_proj.weight", True),
  "mlp.gate_bias": ("mlp.gate_proj.bias", False),
  "mlp.up_bias": ("mlp.up_proj.bias", False),
  "mlp.down_bias": ("mlp.down_proj.bias", False),
}
# Top-level tensors: our path -> (HF name, transpose).
TOP_WEIGHTS = {
  "embed": ("model.embed_tokens.weight", False),
  "lm_head": ("lm_head.weight", True),
  "final_norm.scale": ("model.norm.weight", False),
}
PRE_NORMS = {
  "attn_norm.scale": "input_layernorm.weight",
  "mlp_norm.scale": "post_attention_layernorm.weight",
}
POST_NORMS = {
  "attn_post_norm.scale": "post_attention_layernorm.weight",
  "mlp_post_norm.scale": "post_feedforward_layernorm.weight",
}
SANDWICH_NORMS = {
  "attn_norm.scale": "input_layernorm.weight",
  "attn_post_norm.scale": "post_attention_layernorm.weight",
  "mlp_norm.scale": "pre_feedforward_layernorm.weight",
  "mlp_post_norm.scale": "post_feedforward_layernorm.weight",
}


@dataclasses.dataclass(frozen=True)
class Family:
  name: str  # our configs/ family (config.model.family).
  fields: dict  # config.model field <- config.json key.
  defaults: dict  # HF class defaults for config.json keys that may be absent.
  model: dict  # config.model fields the HF modeling code hard-codes.
  norms: dict  # our block norm path -> HF per-layer norm name.
  layer_types: Callable  # hf dict -> [FULL | SLIDING] per layer.
  rope_layers: Callable = lambda hf: [True] * hf["num_hidden_layers"]  # RoPE on layer i?
  local_theta_key: str = ""  # pre-`rope_parameters` key of the sliding layers' theta.
  rejected: dict = dataclasses.field(default_factory=dict)  # key -> value HF may hold
  #   that we cannot represent.


def _given_layer_types(hf):
  """`layer_types` as saved (transformers >= 4.5x writes it for windowed families)."""
  return hf.get("layer_types") or [FULL] * hf["num_hidden_layers"]


def _qwen3_layer_types(hf):
  if hf.get("layer_types"):
    return hf["layer_types"]
  window = hf["sliding_window"] if hf["use_sliding_window"] else None
  return [
    SLIDING if window and i >= hf["max_window_layers"] else FULL
    for i in range(hf["num_hidden_layers"])
  ]


def _gemma3_layer_types(hf):
  period = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
  return hf.get("layer_types") or [
    SLIDING if (i + 1) % period else FULL for i in range(hf["num_hidden_layers"])
  ]


def _smollm3_rope_layers(hf):  # no_rope_layers[i] == 1 means layer i *uses* RoPE.
  n, every = hf["num_hidden_layers"], hf["no_rope_layer_interval"]
  return [bool(r) for r in hf.get("no_rope_layers") or [(i + 1) % every for i in range(n)]]


def _smollm3_layer_types(hf):  # HF windows only the NoPE layers.
  if hf.get("layer_types"):
    return hf["layer_types"]
  window = hf["use_sliding_window"] and hf["sliding_window"]
  return [SLIDING if window and not rope else FULL for rope in _smollm3_rope_layers(hf)]


def _mistral_layer_types(hf):  # HF Mistral windows every layer and ignores layer_types.
  return [SLIDING if hf.get("sliding_window") else FULL] * hf["num_hidden_layers"]


_LLAMA_DEFAULTS = dict(
  rms_norm_eps=1e-6,
  tie_word_embeddings=False,
  attention_bias=False,
  mlp_bias=False,
  hidden_act="silu",
  num_key_value_heads=None,
  head_dim=None,
  rope_theta=10_000.0,
  max_position_embeddings=2048,
)

FAMILIES = {
  "llama": Family(
    name="llama3",
    fields={**COMMON_FIELDS, **ATTENTION_BIAS, "mlp_bias": "mlp_bias"},
    defaults=_LLAMA_DEFAULTS,
    model={},
    norms=PRE_NORMS,
    layer_types=lambda hf: [FULL] * hf["num_hidden_layers"],
  ),
  "qwen3": Family(
    name="qwen3",
    fields={**COMMON_FIELDS, **ATTENTION_BIAS},
    defaults=dict(
      _LLAMA_DEFAULTS,
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
  "gemma3_text": Family(
    name="gemma3",
    fields={
      **COMMON_FIELDS,
      **ATTENTION_BIAS,
      "activation": "hidden_activation",
      "query_pre_attn_scalar": "query_pre_attn_scalar",
      "final_logit_softcap": "final_logit_softcapping",
    },
    defaults=dict(
      _LLAMA_DEFAULTS,
      tie_word_embeddings=True,
      head_dim=256,
      hidden_activation="gelu_pytorch_tanh",
      query_pre_attn_scalar=256,
      final_logit_softcapping=None,
      sliding_window=4096,
      rope_theta=1_000_000.0,
      rope_local_base_freq=10_000.0,
      max_position_embeddings=131_072,
    ),
    # HF Gemma3Attention stores `attn_logit_softcapping` but never passes it
    # to the attention function (transformers 5.x), so it must stay off here.
    model=dict(
      norm="rms_one_plus",
      norm_placement="sandwich",
      qk_norm="head",
      embed_scale=True,
      attn_logit_softcap=0.0,
    ),
    norms=SANDWICH_NORMS,
    layer_types=_gemma3_layer_types,
    local_theta_key="rope_local_base_freq",
    rejected={"use_bidirectional_attention": True},
  ),
  "olmo2": Family(
    name="olmo2",
    fields={**COMMON_FIELDS, **ATTENTION_BIAS},
    defaults=dict(_LLAMA_DEFAULTS, rms_norm_eps=1e-5),
    model=dict(norm_placement="post", qk_norm="full"),
    norms=POST_NORMS,
    layer_types=lambda hf: [FULL] * hf["num_hidden_layers"],
  ),
  "smollm3": Family(
    name="smollm3",
    fields={**COMMON_FIELDS, **ATTENTION_BIAS, "mlp_bias": "mlp_bias"},
    defaults=dict(
      _LLAMA_DEFAULTS,
      tie_word_embeddings=True,
      no_rope_layers=None,
      no_rope_layer_interval=4,
      use_sliding_window=False,
      sliding_window=None,
      rope_theta=2_000_000.0,
      max_position_embeddings=32768,
    ),
    model={},
    norms=PRE_NORMS,
    layer_types=_smollm3_layer_types,
    rope_layers=_smollm3_rope_layers,
  ),
  "mistral": Family(
    name="mistral",
    fields=COMMON_FIELDS,  # HF Mistral has no attention or MLP bias.
    defaults=dict(_LLAMA_DEFAULTS, sliding_window=4096, max_position_embeddings=131_072),
    model={},
    norms=PRE_NORMS,
    layer_types=_mistral_layer_types,
  ),
}


def family(model_type) -> Family:
  if model_type not in FAMILIES:
    raise ValueError(
      f"config.json model_type={model_type!r} is not supported; supported: {', '.join(FAMILIES)}"
    )
  return FAMILIES[model_type]
