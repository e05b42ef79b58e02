"""The DeepSeek lineage: DeepSeek-V3, Kimi K2 (V3's code), DeepSeek-V3.2, and GLM-5
(V3.2's skeleton)."""

from modeling.hf.families.common import (
  COMMON_FIELDS,
  DEEPSEEK_MOE_FIELDS,
  DEEPSEEK_MOE_MODEL,
  INDEXER_FIELDS,
  LLAMA_DEFAULTS,
  MLA_FIELDS,
  Family,
  first_k_dense_layers,
  first_k_dense_layout,
  mlp_layer_types,
)
from modeling.hf.tensors import PRE_NORMS

DEEPSEEK_V3 = dict(
  fields={**COMMON_FIELDS, **MLA_FIELDS, **DEEPSEEK_MOE_FIELDS},
  defaults=dict(
    LLAMA_DEFAULTS,
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
  ffn_layers=first_k_dense_layers,
  extra_layers_key="num_nextn_predict_layers",
  architecture="DeepseekV3ForCausalLM",
  layout=first_k_dense_layout,
  # HF DeepSeek-V3 always routes by sigmoid + e_score_correction_bias; MLA has no biases.
  required=dict(
    attention_bias=False, hidden_act="silu", scoring_func="sigmoid", topk_method="noaux_tc"
  ),
)


# V3.2 is V3 with an indexer in every layer (HF's `indexed_attention` layer type,
# which is all we read: `layer_types` is left to the default) and MLA's
# interleaved RoPE hard-coded rather than a `rope_interleave` key.
_DEEPSEEK_V32 = dict(
  DEEPSEEK_V3,
  fields={
    **COMMON_FIELDS,
    **{f: k for f, k in MLA_FIELDS.items() if f != "mla.rope_interleave"},
    **DEEPSEEK_MOE_FIELDS,
    **INDEXER_FIELDS,
  },
  defaults=dict(
    DEEPSEEK_V3["defaults"],
    index_n_heads=64,
    index_head_dim=128,
    index_topk=2048,
    max_position_embeddings=163_840,
  ),
  model={**DEEPSEEK_V3["model"], "mla.rope_interleave": True},
  ffn_layers=mlp_layer_types,
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


FAMILIES = {
  "deepseek_v3": Family(name="deepseek_v3", **DEEPSEEK_V3),
  # Kimi K2 ships DeepSeek-V3 code under its own model_type.
  "kimi_k2": Family(name="kimi_k2", **DEEPSEEK_V3),
  "deepseek_v32": Family(name="deepseek_v32", **_DEEPSEEK_V32),
  "glm_moe_dsa": Family(name="glm5", **_GLM_MOE_DSA),
}
