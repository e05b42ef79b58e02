"""The Mistral lineage: Mistral (a window on every layer) and Mixtral's experts."""

from modeling.hf.families.common import (
  COMMON_FIELDS,
  FULL,
  LLAMA_DEFAULTS,
  MIXTRAL_MOE_FIELDS,
  SLIDING,
  Family,
  all_moe,
)
from modeling.hf.tensors import AS_IS, PRE_NORMS, TRANSPOSE


def mistral_layer_types(hf):  # HF Mistral windows every layer and ignores layer_types.
  return [SLIDING if hf.get("sliding_window") else FULL] * hf["num_hidden_layers"]


# Mixtral's config defaults and routing (softmax, top-k renormalised); MiniMax-01's too.
MIXTRAL_DEFAULTS = dict(
  LLAMA_DEFAULTS,
  rms_norm_eps=1e-5,
  sliding_window=None,
  num_local_experts=8,
  num_experts_per_tok=2,
  rope_theta=1_000_000.0,
  max_position_embeddings=131_072,
)


MIXTRAL_MODEL = {"moe.router": "softmax", "moe.norm_topk": True}


# Mixtral-style hub layout (MiniMax-M2): `block_sparse_moe`, experts w1 (gate), w3 (up), w2 (down).
MIXTRAL_WEIGHTS = {
  "mlp.router.kernel": ("block_sparse_moe.gate.weight", TRANSPOSE),
  "mlp.router.aux_free_bias": ("block_sparse_moe.e_score_correction_bias", AS_IS),
  "mlp.experts.gate_proj": ("block_sparse_moe.experts.{x}.w1.weight", TRANSPOSE),
  "mlp.experts.up_proj": ("block_sparse_moe.experts.{x}.w3.weight", TRANSPOSE),
  "mlp.experts.down_proj": ("block_sparse_moe.experts.{x}.w2.weight", TRANSPOSE),
}


FAMILIES = {
  "mistral": Family(
    name="mistral",
    architecture="MistralForCausalLM",
    fields=COMMON_FIELDS,  # HF Mistral has no attention or MLP bias.
    defaults=dict(LLAMA_DEFAULTS, sliding_window=4096, max_position_embeddings=131_072),
    model={},
    norms=PRE_NORMS,
    layer_types=mistral_layer_types,
  ),
  # Mixtral: Mistral's attention (a window on every layer if set), every FFN 8 SwiGLU
  # experts under a softmax router whose top-k weights are renormalised.
  "mixtral": Family(
    name="mixtral",
    architecture="MixtralForCausalLM",
    fields=MIXTRAL_MOE_FIELDS,
    defaults=MIXTRAL_DEFAULTS,
    model=MIXTRAL_MODEL,
    norms=PRE_NORMS,
    layer_types=mistral_layer_types,
    ffn_layers=all_moe,
    weights=MIXTRAL_WEIGHTS,
    required=dict(hidden_act="silu"),  # the experts are SwiGLU.
    aliases={"num_experts": "num_local_experts"},
  ),
}
