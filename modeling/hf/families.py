"""Hugging Face name maps: one `Family` record per HF `model_type`.

A family is data: which config.json keys fill which `config.model` fields,
the HF defaults for keys a config.json may omit, the `config.model` fields the
HF modeling code hard-codes, the config.json values it cannot take, the names
of the per-layer norm tensors and of any tensors named unlike the shared
tables, and small rules that give each layer's attention kind, positional kind
and FFN kind, and the inverse rule (`layout`) that writes those layer kinds back
as the keys its HF config reads. `loader.py` and `export.py` hold the only
logic; nothing there names a family.
"""

import dataclasses
from collections.abc import Callable

from modeling.hf.tensors import (
  GEMMA3N_WEIGHTS,
  GPT_OSS_WEIGHTS,
  KIMI_LINEAR_WEIGHTS,
  LLAMA4_WEIGHTS,
  MINIMAX_WEIGHTS,
  MIXTRAL_WEIGHTS,
  POST_NORMS,
  PRE_NORMS,
  QWEN_SHARED_EXPERT_WEIGHTS,
  SANDWICH_NORMS,
)

FULL, SLIDING, CHUNKED = "full_attention", "sliding_attention", "chunked_attention"
LINEAR = "linear_attention"  # a gated DeltaNet, KDA or lightning attention layer
DENSE, MOE = "dense", "moe"

# config.model field <- config.json key, shared by every family. A dotted field
# is nested ("moe.top_k"); a (key, {hf value: ours}) pair translates the value.
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
MLA_FIELDS = {
  "mla.q_lora_rank": "q_lora_rank",  # null -> 0: a plain q_proj.
  "mla.kv_lora_rank": "kv_lora_rank",
  "mla.qk_nope_head_dim": "qk_nope_head_dim",
  "mla.qk_rope_head_dim": "qk_rope_head_dim",
  "mla.v_head_dim": "v_head_dim",
  "mla.rope_interleave": "rope_interleave",
}
# DeepSeek-V3-style routing: sigmoid scores, group limit, routed scale, shared experts.
DEEPSEEK_MOE_FIELDS = {
  "moe.num_experts": "n_routed_experts",
  "moe.top_k": "num_experts_per_tok",
  "moe.expert_mlp_dim": "moe_intermediate_size",
  "moe.norm_topk": "norm_topk_prob",
  "moe.n_group": "n_group",
  "moe.topk_group": "topk_group",
  "moe.routed_scaling": "routed_scaling_factor",
  "moe.num_shared_experts": "n_shared_experts",
}
DEEPSEEK_MOE_MODEL = {"moe.router": "sigmoid", "moe.aux_free_bias": True}
# Mixtral-style experts (MiniMax-M2 too): num_local_experts of intermediate_size each.
MIXTRAL_MOE_FIELDS = {
  **COMMON_FIELDS,
  "moe.num_experts": "num_local_experts",
  "moe.top_k": "num_experts_per_tok",
  "moe.expert_mlp_dim": "intermediate_size",
}
# Qwen MoE families (Qwen2-MoE, Qwen3-MoE, Qwen3-Next): fine-grained experts.
QWEN_MOE_FIELDS = {
  "moe.num_experts": "num_experts",
  "moe.top_k": "num_experts_per_tok",
  "moe.expert_mlp_dim": "moe_intermediate_size",
  "moe.norm_topk": "norm_topk_prob",
}
# DeepSeek Sparse Attention's lightning indexer (V3.2, GLM-5).
INDEXER_FIELDS = {
  "mla.indexer.num_heads": "index_n_heads",
  "mla.indexer.head_dim": "index_head_dim",
  "mla.indexer.topk": "index_topk",
}

# HF `hidden_act` -> config.model.activation.
ACTIVATIONS = {
  "silu": "silu",
  "swish": "silu",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_new": "gelu_tanh",
}


@dataclasses.dataclass(frozen=True)
class Layers:
  """Per-layer kinds of a model, as the `layout` rules read them."""

  types: list  # FULL | SLIDING | CHUNKED per layer.
  ropes: list  # True where the layer uses RoPE.
  ffns: list  # DENSE | MOE per layer.


def _all_full(hf):
  return [FULL] * hf["num_hidden_layers"]


def _all_dense(hf):
  return [DENSE] * hf["num_hidden_layers"]


@dataclasses.dataclass(frozen=True)
class Family:
  name: str  # our configs/ family (config.model.family).
  fields: dict  # config.model field <- config.json key (or (key, value map)).
  defaults: dict  # HF class defaults for config.json keys that may be absent.
  model: dict  # config.model fields the HF modeling code hard-codes.
  norms: dict  # our block norm path -> HF per-layer norm name.
  layer_types: Callable = _all_full  # hf dict -> [FULL | SLIDING] per layer.
  rope_layers: Callable = lambda hf: [True] * hf["num_hidden_layers"]  # RoPE on layer i?
  ffn_layers: Callable = _all_dense  # hf dict -> [DENSE | MOE] per layer.
  weights: dict = dataclasses.field(default_factory=dict)  # tensors.LAYER_WEIGHTS overrides.
  local_theta_key: str = ""  # pre-`rope_parameters` key of the sliding layers' theta.
  nested_rope: bool = False  # `rope_parameters` nested per layer type even without a
  #   local theta key (Olmo 3: YaRN on the full-attention layers only).
  partial_rotary: bool = False  # attention rotates only the leading dims of a head.
  rejected: dict = dataclasses.field(default_factory=dict)  # key -> value HF may hold
  #   that we cannot represent.
  required: dict = dataclasses.field(default_factory=dict)  # key -> the only value we
  #   can represent (HF hard-codes it or a config.model field cannot hold others).
  aliases: dict = dataclasses.field(default_factory=dict)  # config.json key -> the key
  #   `fields` reads (HF's `attribute_map`: hub files and save_pretrained differ).
  extra_layers_key: str = ""  # config.json key counting the layers stored after the
  #   last one (multi-token-prediction modules), which we do not load.
  ignored_prefixes: tuple = ()  # tensor-name prefixes of modules we do not load
  #   (Qwen3-Next's `mtp.` multi-token-prediction block).
  ignored_suffixes: tuple = ()  # tensor-name endings of buffers we derive instead
  #   (MiniMax's lightning decay tables).
  renames: tuple = ()  # (old, new) substrings replaced in stored tensor names on load.
  derived: Callable = lambda hf: {}  # hf dict -> config.model fields computed from
  #   several keys.
  architecture: str = ""  # the HF model class written into an export's config.json.
  layout: Callable = lambda m, layers: {}  # (resolved config.model, Layers) -> the
  #   config.json keys that give those layer kinds and `derived` fields (export).


# Multimodal checkpoints whose language model we load: model_type -> (the
# config.json key of the text config, the prefix of the text model's tensors).
TEXT_MODELS = {"llama4": ("text_config", "language_model.")}


def _given_layer_types(hf):
  """`layer_types` as saved (transformers >= 4.5x writes it for windowed families)."""
  return hf.get("layer_types") or _all_full(hf)


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


def _gemma3_layer_types(hf):
  period = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
  return hf.get("layer_types") or [
    SLIDING if (i + 1) % period else FULL for i in range(hf["num_hidden_layers"])
  ]


def _olmo3_layer_types(hf):  # HF default: 3 sliding layers, then a full one.
  return hf.get("layer_types") or [
    SLIDING if (i + 1) % 4 else FULL for i in range(hf["num_hidden_layers"])
  ]


def _gpt_oss_layer_types(hf):  # HF default: even layers slide, odd layers are full.
  return hf.get("layer_types") or [
    SLIDING if (i + 1) % 2 else FULL for i in range(hf["num_hidden_layers"])
  ]


def _no_rope_layers(hf):  # SmolLM3, Llama 4: no_rope_layers[i] == 1 means layer i *uses* RoPE.
  n, every = hf["num_hidden_layers"], hf["no_rope_layer_interval"]
  return [bool(r) for r in hf.get("no_rope_layers") or [(i + 1) % every for i in range(n)]]


def _smollm3_layer_types(hf):  # HF windows only the NoPE layers.
  if hf.get("layer_types"):
    return hf["layer_types"]
  window = hf["use_sliding_window"] and hf["sliding_window"]
  return [SLIDING if window and not rope else FULL for rope in _no_rope_layers(hf)]


def _mistral_layer_types(hf):  # HF Mistral windows every layer and ignores layer_types.
  return [SLIDING if hf.get("sliding_window") else FULL] * hf["num_hidden_layers"]


def _gemma3n_layer_types(hf):  # HF default: 4 sliding layers, then a full one.
  return hf.get("layer_types") or [
    SLIDING if (i + 1) % 5 else FULL for i in range(hf["num_hidden_layers"])
  ]


def _gemma3n_derived(hf):
  """Per-layer FFN widths (MatFormer) and gate sparsity: HF gives one per layer."""
  n, widths = hf["num_hidden_layers"], hf["intermediate_size"]
  widths = list(widths) if isinstance(widths, (list, tuple)) else [widths] * n
  sparsity = hf.get("activation_sparsity_pattern")
  if sparsity is None:  # HF's default: the first 10 layers at 0.95 when there are more
    sparsity = [0.95] * 10 if n > 10 else []
  sparsity = [float(v) for v in sparsity]
  while sparsity and sparsity[-1] == 0.0:
    sparsity.pop()
  return {
    "mlp_dim": max(widths),
    "mlp_dims": tuple(widths) if len(set(widths)) > 1 else (),
    "activation_sparsity": tuple(sparsity),
  }


def _gemma3n_layout(m, lay):
  n = m.num_layers
  sparsity = list(m.activation_sparsity) + [0.0] * (n - len(m.activation_sparsity))
  return {
    "layer_types": lay.types,
    "intermediate_size": list(m.mlp_dims) or [m.mlp_dim] * n,
    "activation_sparsity_pattern": sparsity,
  }


def _minimax_layer_types(hf):
  """`layer_types` (HF default: softmax on even layers, lightning on odd ones); HF
  windows every softmax layer when `sliding_window` is set."""
  n, window = hf["num_hidden_layers"], hf.get("sliding_window")
  types = hf.get("layer_types") or [FULL if i % 2 == 0 else LINEAR for i in range(n)]
  return [SLIDING if t == FULL and window else t for t in types]


def _minimax_derived(hf):
  """Lightning layers take the softmax layers' head count and head width."""
  heads = hf["num_attention_heads"]
  dim = hf.get("head_dim") or hf["hidden_size"] // heads
  return {
    "linear.kind": "lightning",
    "linear.num_k_heads": heads,
    "linear.num_v_heads": heads,
    "linear.k_head_dim": dim,
    "linear.v_head_dim": dim,
  }


def _minimax_layout(m, lay):
  """HF MiniMax names only full and linear layers (its window is model-wide)."""
  return {"layer_types": [FULL if t == SLIDING else t for t in lay.types]}


def _first_k_dense_layers(hf):  # DeepSeek / GLM: the first `first_k_dense_replace` are dense.
  k = hf["first_k_dense_replace"]
  return [DENSE if i < k else MOE for i in range(hf["num_hidden_layers"])]


def _mlp_layer_types(hf):  # DeepSeek-V3.2: `mlp_layer_types` when saved, else first-k-dense.
  if hf.get("mlp_layer_types"):
    return [DENSE if t == "dense" else MOE for t in hf["mlp_layer_types"]]
  return _first_k_dense_layers(hf)


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


def _all_moe(hf):
  return [MOE] * hf["num_hidden_layers"]


def _llama4_layer_types(hf):  # RoPE layers attend within chunks, NoPE layers globally.
  return hf.get("layer_types") or [CHUNKED if r else FULL for r in _no_rope_layers(hf)]


def _llama4_ffn_layers(hf):  # `moe_layers`, else MoE every `interleave_moe_layer_step`.
  n, step = hf["num_hidden_layers"], hf["interleave_moe_layer_step"]
  moe = hf.get("moe_layers")
  moe = set(range(step - 1, n, step) if moe is None else moe)
  return [MOE if i in moe else DENSE for i in range(n)]


def _llama4_temperature(hf):
  return {
    "nope_temperature_scale": float(hf["attn_scale"]) if hf["attn_temperature_tuning"] else 0.0
  }


# ---- export: layer kinds -> config.json keys (the inverses of the rules above)


def _layer_types_layout(m, lay):
  return {"layer_types": lay.types}


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


def _smollm3_layout(m, lay):
  return {
    "no_rope_layers": [int(r) for r in lay.ropes],
    "use_sliding_window": SLIDING in lay.types,
    "layer_types": lay.types,
  }


def _first_k_dense_layout(m, lay):
  first_moe = next((i for i, f in enumerate(lay.ffns) if f == MOE), len(lay.ffns))
  return {"first_k_dense_replace": first_moe, "num_nextn_predict_layers": 0}


def _llama4_layout(m, lay):
  return {
    "no_rope_layers": [int(r) for r in lay.ropes],
    "layer_types": lay.types,
    "attention_chunk_size": m.attention_chunk or None,
    "moe_layers": [i for i, f in enumerate(lay.ffns) if f == MOE],
    "attn_temperature_tuning": m.nope_temperature_scale > 0,
    "attn_scale": m.nope_temperature_scale or 0.1,
  }


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

_DEEPSEEK_V3 = dict(
  fields={**COMMON_FIELDS, **MLA_FIELDS, **DEEPSEEK_MOE_FIELDS},
  defaults=dict(
    _LLAMA_DEFAULTS,
    vocab_size=129_280,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    rope_interleave=True,
    n_routed_experts=256,
    num_experts_per_tok=8,
    moe_intermediate_size=2048,
    norm_topk_prob=True,
    n_group=8,
    topk_group=4,
    routed_scaling_factor=2.5,
    n_shared_experts=1,
    first_k_dense_replace=3,
    max_position_embeddings=4096,
  ),
  model=dict(DEEPSEEK_MOE_MODEL, attention="mla"),
  norms=PRE_NORMS,
  ffn_layers=_first_k_dense_layers,
  extra_layers_key="num_nextn_predict_layers",
  architecture="DeepseekV3ForCausalLM",
  layout=_first_k_dense_layout,
  # HF DeepSeek-V3 always routes by sigmoid + e_score_correction_bias; MLA has no biases.
  required=dict(
    attention_bias=False, hidden_act="silu", scoring_func="sigmoid", topk_method="noaux_tc"
  ),
)

# V3.2 is V3 with an indexer in every layer (HF's `indexed_attention` layer type,
# which is all we read: `layer_types` is left to the default) and MLA's
# interleaved RoPE hard-coded rather than a `rope_interleave` key.
_DEEPSEEK_V32 = dict(
  _DEEPSEEK_V3,
  fields={
    **COMMON_FIELDS,
    **{f: k for f, k in MLA_FIELDS.items() if f != "mla.rope_interleave"},
    **DEEPSEEK_MOE_FIELDS,
    **INDEXER_FIELDS,
  },
  defaults=dict(
    _DEEPSEEK_V3["defaults"],
    index_n_heads=64,
    index_head_dim=128,
    index_topk=2048,
    max_position_embeddings=163_840,
  ),
  model={**_DEEPSEEK_V3["model"], "mla.rope_interleave": True},
  ffn_layers=_mlp_layer_types,
  architecture="DeepseekV32ForCausalLM",
  required=dict(attention_bias=False, hidden_act="silu"),
)


def _glm_moe_dsa_derived(hf):
  """GLM-5.2 marks layers that reuse the previous full layer's top-k (`indexer_types`,
  else `index_topk_pattern`, else every `index_topk_freq`-th layer from
  `index_skip_topk_offset` runs its own); here every layer runs its own indexer."""
  n, types = hf["num_hidden_layers"], hf.get("indexer_types")
  if types is None and hf.get("index_topk_pattern") is not None:
    types = [{"F": "full", "S": "shared"}.get(c, c) for c in hf["index_topk_pattern"]]
  if types is None:
    freq, offset = max(hf.get("index_topk_freq", 1), 1), hf.get("index_skip_topk_offset", 2)
    types = ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(n)]
  if set(types) != {"full"}:
    raise ValueError(
      f"config.json indexer_types {sorted(set(types))} is not supported for glm_moe_dsa: "
      "layers sharing another layer's top-k are not implemented; only 'full'"
    )
  return {}


# GLM-5: V3.2's MLA, indexer and MoE at GLM's sizes; HF's indexer rotates
# interleaved RoPE pairs (hard-coded; hub files say so in `indexer_rope_interleave`).
_GLM_MOE_DSA = dict(
  _DEEPSEEK_V32,
  defaults=dict(
    _DEEPSEEK_V32["defaults"],
    vocab_size=154_880,
    q_lora_rank=2048,
    qk_nope_head_dim=192,
    v_head_dim=256,
    n_group=1,
    topk_group=1,
    index_n_heads=32,
    rms_norm_eps=1e-5,
    max_position_embeddings=202_752,
  ),
  model={**_DEEPSEEK_V32["model"], "mla.indexer.rope_interleave": True},
  architecture="GlmMoeDsaForCausalLM",
  required=dict(_DEEPSEEK_V32["required"], indexer_rope_interleave=True),
  derived=_glm_moe_dsa_derived,
)


# Mixtral's config defaults and routing (softmax, top-k renormalised); MiniMax-01's too.
_MIXTRAL_DEFAULTS = dict(
  _LLAMA_DEFAULTS,
  rms_norm_eps=1e-5,
  sliding_window=None,
  num_local_experts=8,
  num_experts_per_tok=2,
  rope_theta=1_000_000.0,
  max_position_embeddings=131_072,
)
_MIXTRAL_MODEL = {"moe.router": "softmax", "moe.norm_topk": True}


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


FAMILIES = {
  "llama": Family(
    name="llama3",
    architecture="LlamaForCausalLM",
    fields={**COMMON_FIELDS, **ATTENTION_BIAS, "mlp_bias": "mlp_bias"},
    defaults=_LLAMA_DEFAULTS,
    model={},
    norms=PRE_NORMS,
  ),
  "qwen3": Family(
    name="qwen3",
    architecture="Qwen3ForCausalLM",
    layout=_qwen3_layout,
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
  # Qwen2.5: bias on q/k/v only (HF hard-codes it), Qwen3's window layout, no QK-norm.
  "qwen2": Family(
    name="qwen2",
    architecture="Qwen2ForCausalLM",
    layout=_qwen3_layout,
    fields=COMMON_FIELDS,
    defaults=dict(
      _LLAMA_DEFAULTS,
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
  "gemma3_text": Family(
    name="gemma3",
    architecture="Gemma3ForCausalLM",
    layout=_layer_types_layout,
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
  # Gemma 3n (text): Gemma 3's attention with v-norm and no 1/sqrt(d) scale, AltUp
  # streams, LAuReL, per-layer embeddings, KV sharing in the last layers, sparse
  # gates in the first ones, per-layer FFN widths (MatFormer).
  "gemma3n_text": Family(
    name="gemma3n",
    architecture="Gemma3nForCausalLM",
    layout=_gemma3n_layout,
    fields={
      **{f: k for f, k in COMMON_FIELDS.items() if f != "mlp_dim"},
      **ATTENTION_BIAS,
      "activation": "hidden_activation",
      "final_logit_softcap": "final_logit_softcapping",
      "per_layer_input.dim": "hidden_size_per_layer_input",
      "per_layer_input.vocab_size": "vocab_size_per_layer_input",
      "altup.num_inputs": "altup_num_inputs",
      "altup.active_idx": "altup_active_idx",
      "altup.coef_clip": "altup_coef_clip",
      "altup.correct_scale": "altup_correct_scale",
      "altup.laurel_rank": "laurel_rank",
      "kv_shared_layers": "num_kv_shared_layers",
    },
    defaults=dict(
      _LLAMA_DEFAULTS,
      tie_word_embeddings=True,
      head_dim=256,
      hidden_activation="gelu_pytorch_tanh",
      final_logit_softcapping=30.0,
      sliding_window=512,
      rope_theta=1_000_000.0,
      rope_local_base_freq=10_000.0,
      max_position_embeddings=32_768,
      vocab_size_per_layer_input=262_144,
      hidden_size_per_layer_input=256,
      altup_num_inputs=4,
      altup_active_idx=0,
      altup_coef_clip=120.0,
      altup_correct_scale=True,
      laurel_rank=64,
      num_kv_shared_layers=15,
    ),
    model=dict(
      norm="rms",
      norm_placement="sandwich",
      qk_norm="head",
      v_norm=True,
      query_pre_attn_scalar=1.0,  # no 1/sqrt(head_dim): the QK-norms set the scale
      embed_scale=True,
    ),
    derived=_gemma3n_derived,
    norms=SANDWICH_NORMS,
    layer_types=_gemma3n_layer_types,
    weights=GEMMA3N_WEIGHTS,
    local_theta_key="rope_local_base_freq",
  ),
  "olmo2": Family(
    name="olmo2",
    architecture="Olmo2ForCausalLM",
    fields={**COMMON_FIELDS, **ATTENTION_BIAS},
    defaults=dict(_LLAMA_DEFAULTS, rms_norm_eps=1e-5),
    model=dict(norm_placement="post", qk_norm="full"),
    norms=POST_NORMS,
  ),
  # Olmo 3: Olmo 2's post-norm and QK-norm, a window on 3 of every 4 layers, YaRN (when
  # set) on the full-attention layers only.
  "olmo3": Family(
    name="olmo3",
    architecture="Olmo3ForCausalLM",
    layout=_layer_types_layout,
    fields={**COMMON_FIELDS, **ATTENTION_BIAS},
    defaults=dict(_LLAMA_DEFAULTS, rms_norm_eps=1e-5, sliding_window=4096, rope_theta=500_000.0),
    model=dict(norm_placement="post", qk_norm="full"),
    norms=POST_NORMS,
    layer_types=_olmo3_layer_types,
    nested_rope=True,
  ),
  "smollm3": Family(
    name="smollm3",
    architecture="SmolLM3ForCausalLM",
    layout=_smollm3_layout,
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
    rope_layers=_no_rope_layers,
  ),
  "mistral": Family(
    name="mistral",
    architecture="MistralForCausalLM",
    fields=COMMON_FIELDS,  # HF Mistral has no attention or MLP bias.
    defaults=dict(_LLAMA_DEFAULTS, sliding_window=4096, max_position_embeddings=131_072),
    model={},
    norms=PRE_NORMS,
    layer_types=_mistral_layer_types,
  ),
  # Mixtral: Mistral's attention (a window on every layer if set), every FFN 8 SwiGLU
  # experts under a softmax router whose top-k weights are renormalised.
  "mixtral": Family(
    name="mixtral",
    architecture="MixtralForCausalLM",
    fields=MIXTRAL_MOE_FIELDS,
    defaults=_MIXTRAL_DEFAULTS,
    model=_MIXTRAL_MODEL,
    norms=PRE_NORMS,
    layer_types=_mistral_layer_types,
    ffn_layers=_all_moe,
    weights=MIXTRAL_WEIGHTS,
    required=dict(hidden_act="silu"),  # the experts are SwiGLU.
    aliases={"num_experts": "num_local_experts"},
  ),
  "deepseek_v3": Family(name="deepseek_v3", **_DEEPSEEK_V3),
  # Kimi K2 ships DeepSeek-V3 code under its own model_type.
  "kimi_k2": Family(name="kimi_k2", **_DEEPSEEK_V3),
  "deepseek_v32": Family(name="deepseek_v32", **_DEEPSEEK_V32),
  "glm_moe_dsa": Family(name="glm5", **_GLM_MOE_DSA),
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
      _LLAMA_DEFAULTS,
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
      _LLAMA_DEFAULTS,
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
      _LLAMA_DEFAULTS,
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
      _LLAMA_DEFAULTS,
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
    ffn_layers=_mlp_layer_types,
    weights=KIMI_LINEAR_WEIGHTS,
    # Hub files name MoE layers `block_sparse_moe.` and dense ones `mlp.`.
    renames=((".block_sparse_moe.", ".mlp."),),
    required=dict(attention_bias=False, hidden_act="silu"),
  ),
  "glm4_moe": Family(
    name="glm4_moe",
    architecture="Glm4MoeForCausalLM",
    layout=_first_k_dense_layout,
    fields={
      **COMMON_FIELDS,
      **DEEPSEEK_MOE_FIELDS,
      "qkv_bias": "attention_bias",  # o_proj never has a bias.
      "qk_norm": ("use_qk_norm", {True: "head", False: "none"}),
    },
    defaults=dict(
      _LLAMA_DEFAULTS,
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
    ffn_layers=_first_k_dense_layers,
    extra_layers_key="num_nextn_predict_layers",
    partial_rotary=True,
    required=dict(hidden_act="silu"),
  ),
  "gpt_oss": Family(
    name="gpt_oss",
    architecture="GptOssForCausalLM",
    layout=_layer_types_layout,
    fields={
      **COMMON_FIELDS,
      **ATTENTION_BIAS,
      "moe.num_experts": "num_local_experts",
      "moe.top_k": "num_experts_per_tok",
      "moe.expert_mlp_dim": "intermediate_size",
      "moe.swiglu_limit": "swiglu_limit",
    },
    defaults=dict(
      _LLAMA_DEFAULTS,
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
    ffn_layers=_all_moe,
    weights=GPT_OSS_WEIGHTS,
    aliases={"num_experts": "num_local_experts"},
    # Our clamped SwiGLU hard-codes alpha 1.702 (no config.model field).
    required=dict(swiglu_alpha=1.702),
  ),
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
      _LLAMA_DEFAULTS,
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
    rope_layers=_no_rope_layers,
    ffn_layers=_llama4_ffn_layers,
    weights=LLAMA4_WEIGHTS,
    derived=_llama4_temperature,
    required=dict(hidden_act="silu"),
    aliases={"num_experts": "num_local_experts"},
  ),
  # MiniMax-01 / M1: lightning attention with softmax attention every 8th layer
  # (HF default: every 2nd), every FFN Mixtral-style experts, and DeepNorm-style
  # residuals: the stream is normed before each sublayer, x = a * x + b * f(x).
  "minimax": Family(
    name="minimax01",
    architecture="MiniMaxForCausalLM",
    layout=_minimax_layout,
    fields={
      **MIXTRAL_MOE_FIELDS,
      "linear.chunk": "block_size",
      "residual_scale.attn_alpha": "full_attn_alpha_factor",
      "residual_scale.attn_beta": "full_attn_beta_factor",
      "residual_scale.linear_alpha": "linear_attn_alpha_factor",
      "residual_scale.linear_beta": "linear_attn_beta_factor",
      "residual_scale.mlp_alpha": "mlp_alpha_factor",
      "residual_scale.mlp_beta": "mlp_beta_factor",
    },
    defaults=dict(
      _MIXTRAL_DEFAULTS,  # HF's MiniMaxConfig extends MixtralConfig
      block_size=256,
      full_attn_alpha_factor=1.0,
      full_attn_beta_factor=1.0,
      linear_attn_alpha_factor=1.0,
      linear_attn_beta_factor=1.0,
      mlp_alpha_factor=1.0,
      mlp_beta_factor=1.0,
    ),
    model=dict(_MIXTRAL_MODEL, norm_placement="deepnorm"),
    derived=_minimax_derived,
    norms=PRE_NORMS,
    layer_types=_minimax_layer_types,
    ffn_layers=_all_moe,
    weights=MINIMAX_WEIGHTS,
    required=dict(hidden_act="silu", attention_bias=False),
    aliases={"num_experts": "num_local_experts"},
    ignored_suffixes=("slope_rate", "query_decay", "key_decay", "diagonal_decay"),
  ),
  "minimax_m2": Family(
    name="minimax_m2",
    architecture="MiniMaxM2ForCausalLM",
    fields=MIXTRAL_MOE_FIELDS,
    defaults=dict(
      _LLAMA_DEFAULTS,
      head_dim=128,
      num_local_experts=256,
      num_experts_per_tok=8,
      rope_theta=5_000_000.0,
      max_position_embeddings=196_608,
    ),
    # HF MiniMax-M2: QK RMSNorm over all heads at once, sigmoid routing with the
    # e_score_correction_bias (selection only), renormalised top-k, no shared expert.
    model={
      "qk_norm": "full",
      "moe.router": "sigmoid",
      "moe.norm_topk": True,
      "moe.aux_free_bias": True,
    },
    norms=PRE_NORMS,
    ffn_layers=_all_moe,
    weights=MIXTRAL_WEIGHTS,
    partial_rotary=True,
    required=dict(
      hidden_act="silu",
      scoring_func="sigmoid",
      use_qk_norm=True,
      qk_norm_type="per_layer",
      attention_bias=False,
      shared_intermediate_size=0,
    ),
    aliases={"num_experts": "num_local_experts"},
  ),
}


def family(model_type) -> Family:
  if model_type not in FAMILIES:
    raise ValueError(
      f"config.json model_type={model_type!r} is not supported; supported: {', '.join(FAMILIES)}"
    )
  return FAMILIES[model_type]
