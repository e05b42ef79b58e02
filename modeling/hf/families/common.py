"""What every family's map is made of: the `Family` record, the layer kinds, the
config.json field tables several lineages share, and the layer rules they reuse.
Each lineage's families live in their own file beside this one; `__init__.py`
gathers them into `FAMILIES`."""

import dataclasses
from collections.abc import Callable

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


def all_full(hf):
  return [FULL] * hf["num_hidden_layers"]


def all_dense(hf):
  return [DENSE] * hf["num_hidden_layers"]


@dataclasses.dataclass(frozen=True)
class Family:
  name: str  # our configs/ family (config.model.family).
  fields: dict  # config.model field <- config.json key (or (key, value map)).
  defaults: dict  # HF class defaults for config.json keys that may be absent.
  model: dict  # config.model fields the HF modeling code hard-codes.
  norms: dict  # our block norm path -> HF per-layer norm name.
  layer_types: Callable = all_full  # hf dict -> [FULL | SLIDING] per layer.
  rope_layers: Callable = lambda hf: [True] * hf["num_hidden_layers"]  # RoPE on layer i?
  ffn_layers: Callable = all_dense  # hf dict -> [DENSE | MOE] per layer.
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


def all_moe(hf):
  return [MOE] * hf["num_hidden_layers"]


def no_rope_layers(hf):  # SmolLM3, Llama 4: no_rope_layers[i] == 1 means layer i *uses* RoPE.
  n, every = hf["num_hidden_layers"], hf["no_rope_layer_interval"]
  return [bool(r) for r in hf.get("no_rope_layers") or [(i + 1) % every for i in range(n)]]


def first_k_dense_layers(hf):  # DeepSeek / GLM: the first `first_k_dense_replace` are dense.
  k = hf["first_k_dense_replace"]
  return [DENSE if i < k else MOE for i in range(hf["num_hidden_layers"])]


def mlp_layer_types(hf):  # DeepSeek-V3.2: `mlp_layer_types` when saved, else first-k-dense.
  if hf.get("mlp_layer_types"):
    return [DENSE if t == "dense" else MOE for t in hf["mlp_layer_types"]]
  return first_k_dense_layers(hf)


def layer_types_layout(m, lay):
  return {"layer_types": lay.types}


def first_k_dense_layout(m, lay):
  first_moe = next((i for i, f in enumerate(lay.ffns) if f == MOE), len(lay.ffns))
  return {"first_k_dense_replace": first_moe, "num_nextn_predict_layers": 0}


LLAMA_DEFAULTS = dict(
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
