"""Hugging Face tensor names: our param path -> (HF name, transform).

Shared by every family; a family overrides entries through `Family.weights`
(its lineage's file under families/). `loader.py` applies the transforms.
"""

# How a checkpoint tensor becomes ours: torch Linear weights [out, in] are
# transposed; EVEN / ODD take the even / odd columns of a gate-up interleaved
# tensor (gpt-oss: gate = columns 0, 2, ..., up = 1, 3, ...); FIRST / SECOND take
# the first / second half of the columns of a gate-up concatenated one (Llama 4).
AS_IS, TRANSPOSE, EVEN, ODD = "as_is", "transpose", "even", "odd"
FIRST, SECOND = "first_half", "second_half"
CONV = "conv"  # torch depthwise Conv1d weight [channels, 1, kernel] -> ours [kernel, channels]
HEADS_4D = "heads_4d"  # a [1, 1, heads, 1] tensor (KDA's A_log) <-> ours [heads]

# Our block param path -> (HF name under `model.layers.{i}.`, transform). Paths
# our model lacks (biases, QK-norms when off, MLA when GQA) are never asked for.
ATTENTION_MLP_WEIGHTS = {
  "attn.q_proj": ("self_attn.q_proj.weight", TRANSPOSE),
  "attn.k_proj": ("self_attn.k_proj.weight", TRANSPOSE),
  "attn.v_proj": ("self_attn.v_proj.weight", TRANSPOSE),
  "attn.o_proj": ("self_attn.o_proj.weight", TRANSPOSE),
  "attn.q_bias": ("self_attn.q_proj.bias", AS_IS),
  "attn.k_bias": ("self_attn.k_proj.bias", AS_IS),
  "attn.v_bias": ("self_attn.v_proj.bias", AS_IS),
  "attn.o_bias": ("self_attn.o_proj.bias", AS_IS),
  "attn.q_norm.scale": ("self_attn.q_norm.weight", AS_IS),
  "attn.k_norm.scale": ("self_attn.k_norm.weight", AS_IS),
  "attn.sinks": ("self_attn.sinks", AS_IS),
  "mlp.gate_proj": ("mlp.gate_proj.weight", TRANSPOSE),
  "mlp.up_proj": ("mlp.up_proj.weight", TRANSPOSE),
  "mlp.down_proj": ("mlp.down_proj.weight", TRANSPOSE),
  "mlp.gate_bias": ("mlp.gate_proj.bias", AS_IS),
  "mlp.up_bias": ("mlp.up_proj.bias", AS_IS),
  "mlp.down_bias": ("mlp.down_proj.bias", AS_IS),
}
# Multi-head latent attention (plain `attn.q_proj` when q_lora_rank is 0).
MLA_WEIGHTS = {
  "attn.q_a_proj": ("self_attn.q_a_proj.weight", TRANSPOSE),
  "attn.q_a_norm.scale": ("self_attn.q_a_layernorm.weight", AS_IS),
  "attn.q_b_proj": ("self_attn.q_b_proj.weight", TRANSPOSE),
  "attn.kv_a_proj": ("self_attn.kv_a_proj_with_mqa.weight", TRANSPOSE),
  "attn.kv_a_norm.scale": ("self_attn.kv_a_layernorm.weight", AS_IS),
  "attn.kv_b_proj": ("self_attn.kv_b_proj.weight", TRANSPOSE),
  # DeepSeek Sparse Attention's lightning indexer.
  "attn.indexer.wq_b": ("self_attn.indexer.wq_b.weight", TRANSPOSE),
  "attn.indexer.wk": ("self_attn.indexer.wk.weight", TRANSPOSE),
  "attn.indexer.k_norm.scale": ("self_attn.indexer.k_norm.weight", AS_IS),
  "attn.indexer.k_norm.bias": ("self_attn.indexer.k_norm.bias", AS_IS),
  "attn.indexer.weights_proj": ("self_attn.indexer.weights_proj.weight", TRANSPOSE),
}
# Hub MoE layout (DeepSeek, Qwen-MoE, GLM-MoE): `{x}` is the routed expert,
# one tensor each, stacked on a leading experts axis.
MOE_WEIGHTS = {
  "mlp.router.kernel": ("mlp.gate.weight", TRANSPOSE),
  "mlp.router.aux_free_bias": ("mlp.gate.e_score_correction_bias", AS_IS),
  "mlp.experts.gate_proj": ("mlp.experts.{x}.gate_proj.weight", TRANSPOSE),
  "mlp.experts.up_proj": ("mlp.experts.{x}.up_proj.weight", TRANSPOSE),
  "mlp.experts.down_proj": ("mlp.experts.{x}.down_proj.weight", TRANSPOSE),
  "mlp.shared.gate_proj": ("mlp.shared_experts.gate_proj.weight", TRANSPOSE),
  "mlp.shared.up_proj": ("mlp.shared_experts.up_proj.weight", TRANSPOSE),
  "mlp.shared.down_proj": ("mlp.shared_experts.down_proj.weight", TRANSPOSE),
}
# Gated DeltaNet layers (Qwen3-Next's `linear_attn`); fused tensors keep HF's layout.
DELTANET_WEIGHTS = {
  "attn.in_proj_qkvz": ("linear_attn.in_proj_qkvz.weight", TRANSPOSE),
  "attn.in_proj_ba": ("linear_attn.in_proj_ba.weight", TRANSPOSE),
  "attn.conv": ("linear_attn.conv1d.weight", CONV),
  "attn.A_log": ("linear_attn.A_log", AS_IS),
  "attn.dt_bias": ("linear_attn.dt_bias", AS_IS),
  "attn.norm.scale": ("linear_attn.norm.weight", AS_IS),
  "attn.out_proj": ("linear_attn.out_proj.weight", TRANSPOSE),
}
LAYER_WEIGHTS = {**ATTENTION_MLP_WEIGHTS, **MLA_WEIGHTS, **MOE_WEIGHTS, **DELTANET_WEIGHTS}
# Top-level tensors: our path -> (HF name, transform).
TOP_WEIGHTS = {
  "embed": ("model.embed_tokens.weight", AS_IS),
  "lm_head": ("lm_head.weight", TRANSPOSE),
  "final_norm.scale": ("model.norm.weight", AS_IS),
  # Gemma 3n: per-layer embeddings and AltUp's stream projections (`{x}`: stream x + 1).
  "stream.per_layer_embed": ("model.embed_tokens_per_layer.weight", AS_IS),
  "stream.per_layer_proj": ("model.per_layer_model_projection.weight", TRANSPOSE),
  "stream.per_layer_norm.scale": ("model.per_layer_projection_norm.weight", AS_IS),
  "stream.altup_in": ("model.altup_projections.{x}.weight", TRANSPOSE),
  "stream.altup_out": ("model.altup_unembed_projections.{x}.weight", TRANSPOSE),
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
# A DeepSeek-line multi-token-prediction module k, stored as layer num_layers + k
# (`num_nextn_predict_layers` of them): its block under the usual layer names,
# and these (the official checkpoints also copy the embedding and the head there
# as `embed_tokens` and `shared_head.head`: written on export, not read).
MTP_WEIGHTS = {
  "enorm.scale": ("enorm.weight", AS_IS),
  "hnorm.scale": ("hnorm.weight", AS_IS),
  "eh_proj": ("eh_proj.weight", TRANSPOSE),
  "final_norm.scale": ("shared_head.norm.weight", AS_IS),
}
MTP_KEY = "num_nextn_predict_layers"  # config.json: how many MTP layers follow (DeepSeek, GLM)
