"""The MiniMax lineage: MiniMax-01 / M1 (lightning attention, DeepNorm) and MiniMax-M2."""

from modeling.hf.families.common import (
  FULL,
  LINEAR,
  LLAMA_DEFAULTS,
  MIXTRAL_MOE_FIELDS,
  SLIDING,
  Family,
  all_moe,
)
from modeling.hf.families.mistral import MIXTRAL_DEFAULTS, MIXTRAL_MODEL, MIXTRAL_WEIGHTS
from modeling.hf.tensors import AS_IS, PRE_NORMS, TRANSPOSE


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


# MiniMax-01: lightning attention layers under `self_attn.` (q, k, v fused per head
# [h, (q, k, v)]); Mixtral's hub MoE names.
MINIMAX_WEIGHTS = {
  **MIXTRAL_WEIGHTS,
  "attn.qkv_proj": ("self_attn.qkv_proj.weight", TRANSPOSE),
  "attn.output_gate": ("self_attn.output_gate.weight", TRANSPOSE),
  "attn.out_proj": ("self_attn.out_proj.weight", TRANSPOSE),
  "attn.norm.scale": ("self_attn.norm.weight", AS_IS),
}


FAMILIES = {
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
      MIXTRAL_DEFAULTS,  # HF's MiniMaxConfig extends MixtralConfig
      block_size=256,
      full_attn_alpha_factor=1.0,
      full_attn_beta_factor=1.0,
      linear_attn_alpha_factor=1.0,
      linear_attn_beta_factor=1.0,
      mlp_alpha_factor=1.0,
      mlp_beta_factor=1.0,
    ),
    model=dict(MIXTRAL_MODEL, norm_placement="deepnorm"),
    derived=_minimax_derived,
    norms=PRE_NORMS,
    layer_types=_minimax_layer_types,
    ffn_layers=all_moe,
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
      LLAMA_DEFAULTS,
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
    ffn_layers=all_moe,
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
