"""Hugging Face tensor names: our param path -> (HF name, transform).

Shared by every family; a family overrides entries through `Family.weights`
(families.py). `loader.py` applies the transforms.
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
# Kimi Linear: KDA layers under `self_attn.` (q/k/v/o projections as above, one
# conv per q, k, v); routed experts in Mixtral's w1 (gate), w3 (up), w2 (down).
KIMI_LINEAR_WEIGHTS = {
  "attn.q_conv": ("self_attn.q_conv1d.weight", CONV),
  "attn.k_conv": ("self_attn.k_conv1d.weight", CONV),
  "attn.v_conv": ("self_attn.v_conv1d.weight", CONV),
  "attn.f_a_proj": ("self_attn.f_a_proj.weight", TRANSPOSE),
  "attn.f_b_proj": ("self_attn.f_b_proj.weight", TRANSPOSE),
  "attn.b_proj": ("self_attn.b_proj.weight", TRANSPOSE),
  "attn.g_a_proj": ("self_attn.g_a_proj.weight", TRANSPOSE),
  "attn.g_b_proj": ("self_attn.g_b_proj.weight", TRANSPOSE),
  "attn.A_log": ("self_attn.A_log", HEADS_4D),
  "attn.dt_bias": ("self_attn.dt_bias", AS_IS),
  "attn.norm.scale": ("self_attn.o_norm.weight", AS_IS),
  "mlp.experts.gate_proj": ("mlp.experts.{x}.w1.weight", TRANSPOSE),
  "mlp.experts.up_proj": ("mlp.experts.{x}.w3.weight", TRANSPOSE),
  "mlp.experts.down_proj": ("mlp.experts.{x}.w2.weight", TRANSPOSE),
}
# Qwen-MoE's gated shared expert (`shared_expert` + `shared_expert_gate`).
QWEN_SHARED_EXPERT_WEIGHTS = {
  "mlp.shared.gate_proj": ("mlp.shared_expert.gate_proj.weight", TRANSPOSE),
  "mlp.shared.up_proj": ("mlp.shared_expert.up_proj.weight", TRANSPOSE),
  "mlp.shared.down_proj": ("mlp.shared_expert.down_proj.weight", TRANSPOSE),
  "mlp.shared_gate": ("mlp.shared_expert_gate.weight", TRANSPOSE),
}
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
# Mixtral-style hub layout (MiniMax-M2): `block_sparse_moe`, experts w1 (gate), w3 (up), w2 (down).
MIXTRAL_WEIGHTS = {
  "mlp.router.kernel": ("block_sparse_moe.gate.weight", TRANSPOSE),
  "mlp.router.aux_free_bias": ("block_sparse_moe.e_score_correction_bias", AS_IS),
  "mlp.experts.gate_proj": ("block_sparse_moe.experts.{x}.w1.weight", TRANSPOSE),
  "mlp.experts.up_proj": ("block_sparse_moe.experts.{x}.w3.weight", TRANSPOSE),
  "mlp.experts.down_proj": ("block_sparse_moe.experts.{x}.w2.weight", TRANSPOSE),
}
# MiniMax-01: lightning attention layers under `self_attn.` (q, k, v fused per head
# [h, (q, k, v)]); Mixtral's hub MoE names.
MINIMAX_WEIGHTS = {
  **MIXTRAL_WEIGHTS,
  "attn.qkv_proj": ("self_attn.qkv_proj.weight", TRANSPOSE),
  "attn.output_gate": ("self_attn.output_gate.weight", TRANSPOSE),
  "attn.out_proj": ("self_attn.out_proj.weight", TRANSPOSE),
  "attn.norm.scale": ("self_attn.norm.weight", AS_IS),
}
# Gemma 3n: AltUp, LAuReL and the per-layer input gate beside Gemma's attention and MLP.
GEMMA3N_WEIGHTS = {
  "altup.router": ("altup.modality_router.weight", TRANSPOSE),
  "altup.router_norm.scale": ("altup.router_norm.weight", AS_IS),
  "altup.prediction_coefs": ("altup.prediction_coefs.weight", TRANSPOSE),
  "altup.correction_coefs": ("altup.correction_coefs.weight", TRANSPOSE),
  "altup.correct_output_scale": ("altup.correct_output_scale", AS_IS),
  "laurel.left": ("laurel.linear_left.weight", TRANSPOSE),
  "laurel.right": ("laurel.linear_right.weight", TRANSPOSE),
  "laurel.norm.scale": ("laurel.post_laurel_norm.weight", AS_IS),
  "per_layer.gate": ("per_layer_input_gate.weight", TRANSPOSE),
  "per_layer.proj": ("per_layer_projection.weight", TRANSPOSE),
  "per_layer.norm.scale": ("post_per_layer_input_norm.weight", AS_IS),
}
# Top-level tensors: our path -> (HF name, transform).
TOP_WEIGHTS = {
  "embed": ("model.embed_tokens.weight", AS_IS),
  "lm_head": ("lm_head.weight", TRANSPOSE),
  "final_norm.scale": ("model.norm.weight", AS_IS),
  # Gemma 3n: per-layer embeddings and AltUp's stream projections (`{x}`: stream x + 1).
  "per_layer_embed": ("model.embed_tokens_per_layer.weight", AS_IS),
  "per_layer_proj": ("model.per_layer_model_projection.weight", TRANSPOSE),
  "per_layer_norm.scale": ("model.per_layer_projection_norm.weight", AS_IS),
  "altup_in": ("model.altup_projections.{x}.weight", TRANSPOSE),
  "altup_out": ("model.altup_unembed_projections.{x}.weight", TRANSPOSE),
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
