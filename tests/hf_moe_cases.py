"""The MoE families' tiny random HF configs (HF class, config class, kwargs), shared
by the parity tests (test_hf_parity_moe.py) and the config-reading tests."""

import transformers

# DeepSeek MLA and MoE sizes shared by the V3 and V3.2 cases.
_DEEPSEEK = dict(
  num_key_value_heads=4,
  q_lora_rank=32,
  kv_lora_rank=16,
  qk_nope_head_dim=16,
  qk_rope_head_dim=8,
  v_head_dim=16,
  first_k_dense_replace=1,
  n_routed_experts=16,
  num_experts_per_tok=4,
  moe_intermediate_size=32,
  n_group=4,
  topk_group=2,
)

# name -> (HF model class, HF config class, config kwargs).
CASES = {
  # MLA (q LoRA, interleaved rope), YaRN with mscale != mscale_all_dim, 1 dense
  # layer then 3 scanned MoE layers: 16 experts in 4 groups, top-4 from the best
  # 2 groups, sigmoid + correction bias, 2 shared experts, routed scale 2.5.
  "deepseek_v3": (
    transformers.DeepseekV3ForCausalLM,
    transformers.DeepseekV3Config,
    dict(
      _DEEPSEEK,
      num_hidden_layers=4,
      head_dim=8,  # HF's rope width; DeepseekV3Config sets it to qk_rope_head_dim.
      max_position_embeddings=64,
      n_shared_experts=2,
      routed_scaling_factor=2.5,
      rope_parameters=dict(
        rope_type="yarn",
        rope_theta=10_000.0,
        factor=4.0,
        original_max_position_embeddings=16,
        mscale=1.0,
        mscale_all_dim=0.5,
      ),
    ),
  ),
  # V3 plus DeepSeek Sparse Attention: each query keeps its top-8 of up to 32 keys
  # by a 16-head indexer (half-split RoPE on its first 8 of 16 dims, LayerNorm key).
  # 16 heads, not 4: a key whose ReLU scores are 0 in every head ties at exactly 0,
  # and torch's top-k breaks ties unlike XLA's (lower position first); with 16
  # heads that has odds ~2^-16 per pair.
  "deepseek_v32": (
    transformers.DeepseekV32ForCausalLM,
    transformers.DeepseekV32Config,
    dict(
      _DEEPSEEK,
      num_hidden_layers=3,
      n_shared_experts=1,
      index_n_heads=16,
      index_head_dim=16,
      index_topk=8,
    ),
  ),
  # GLM-5: V3.2's layers with values wider than the query/key heads and an
  # indexer that rotates interleaved RoPE pairs; one expert group.
  "glm5": (
    transformers.GlmMoeDsaForCausalLM,
    transformers.GlmMoeDsaConfig,
    dict(
      _DEEPSEEK,
      num_hidden_layers=3,
      v_head_dim=24,
      n_group=1,
      topk_group=1,
      n_shared_experts=1,
      index_n_heads=16,
      index_head_dim=16,
      index_topk=8,
    ),
  ),
  # Gated DeltaNet x3 then gated softmax attention (1 + w norms, QK-norm, 1/4
  # rotary); layer 0 dense (mlp_only_layers), then softmax top-2 of 8 experts plus a
  # sigmoid-gated shared expert. Key heads 2 serve 4 value heads. rms_norm_eps 1e-5:
  # strongly decayed heads read outputs near 1e-4, which the gated norm scales by up
  # to 1/sqrt(eps); at 1e-6 that turns float32 rounding into 2e-4 logit noise that
  # shifts with XLA's fusion choices (HF float32 itself is 6e-5 off float64 there).
  "qwen3_next": (
    transformers.Qwen3NextForCausalLM,
    transformers.Qwen3NextConfig,
    dict(
      num_hidden_layers=4,
      linear_num_key_heads=2,
      linear_num_value_heads=4,
      linear_key_head_dim=16,
      linear_value_head_dim=8,
      num_experts=8,
      num_experts_per_tok=2,
      moe_intermediate_size=32,
      shared_expert_intermediate_size=48,
      mlp_only_layers=[0],
      rms_norm_eps=1e-5,
    ),
  ),
  # KDA x3 then MLA without RoPE (plain q_proj; 1/sqrt(qk dim) scale); layer 0 dense,
  # then sigmoid top-2 of 8 experts in 2 groups (best 1 group) with a correction
  # bias, one shared expert and routed scale 2.446. 4 KDA heads of 16.
  "kimi_linear": (
    transformers.KimiLinearForCausalLM,
    transformers.KimiLinearConfig,
    dict(
      num_hidden_layers=4,
      num_key_value_heads=4,  # MLA expands to every head; HF repeats kv by heads / this
      q_lora_rank=None,
      kv_lora_rank=16,
      qk_nope_head_dim=16,
      qk_rope_head_dim=8,
      v_head_dim=16,
      linear_num_heads=4,
      linear_head_dim=16,
      num_local_experts=8,
      num_experts_per_tok=2,
      moe_intermediate_size=32,
      n_group=2,
      topk_group=1,
      layer_types=["linear_attention"] * 3 + ["full_attention"],
      mlp_layer_types=["dense"] + ["sparse"] * 3,
    ),
  ),
  # MoE on every 2nd layer (pattern dense, moe), softmax top-2 of 8, not renormalised.
  "qwen3_moe": (
    transformers.Qwen3MoeForCausalLM,
    transformers.Qwen3MoeConfig,
    dict(
      num_hidden_layers=4,
      decoder_sparse_step=2,
      num_experts=8,
      num_experts_per_tok=2,
      moe_intermediate_size=32,
      norm_topk_prob=False,
    ),
  ),
  # q/k/v bias; layer 0 dense (mlp_only_layers), then softmax top-2 of 8 not renormalised
  # plus a sigmoid-gated shared expert; a window of 8 on the even layers below 2.
  "qwen2_moe": (
    transformers.Qwen2MoeForCausalLM,
    transformers.Qwen2MoeConfig,
    dict(
      num_hidden_layers=3,
      mlp_only_layers=[0],
      num_experts=8,
      num_experts_per_tok=2,
      moe_intermediate_size=32,
      shared_expert_intermediate_size=48,
      norm_topk_prob=False,
      use_sliding_window=True,
      sliding_window=8,
      max_window_layers=2,
    ),
  ),
  # Every FFN softmax top-2 of 8 renormalised (experts of the FFN width), a window of 8.
  "mixtral": (
    transformers.MixtralForCausalLM,
    transformers.MixtralConfig,
    dict(
      num_hidden_layers=2,
      intermediate_size=32,
      num_local_experts=8,
      num_experts_per_tok=2,
      sliding_window=8,
    ),
  ),
  # Half-rotary heads, q/k/v bias, QK-norm, 1 dense layer, sigmoid routing
  # over 2 groups of which 1 is used, a shared expert.
  "glm4_moe": (
    transformers.Glm4MoeForCausalLM,
    transformers.Glm4MoeConfig,
    dict(
      num_hidden_layers=3,
      first_k_dense_replace=1,
      n_routed_experts=16,
      num_experts_per_tok=4,
      moe_intermediate_size=32,
      n_group=2,
      topk_group=1,
      routed_scaling_factor=2.5,
      use_qk_norm=True,
      attention_bias=True,
      rope_parameters=dict(rope_type="default", rope_theta=10_000.0, partial_rotary_factor=0.5),
    ),
  ),
  # Sinks, sliding (window 8) / full layers, q/k/v/o biases, biased router with a
  # softmax over the top-2 logits, interleaved gate-up experts with biases, a
  # SwiGLU clamp low enough to bind (1.0, released: 7.0). The released YaRN: x32
  # over 4096 with an unrounded correction range (truncate=False).
  "gpt_oss": (
    transformers.GptOssForCausalLM,
    transformers.GptOssConfig,
    dict(
      num_hidden_layers=4,
      num_local_experts=8,
      num_experts_per_tok=2,
      intermediate_size=32,
      sliding_window=8,
      swiglu_limit=1.0,
      max_position_embeddings=131_072,
      rope_parameters=dict(
        rope_type="yarn",
        rope_theta=150_000.0,
        factor=32.0,
        beta_fast=32.0,
        beta_slow=1.0,
        original_max_position_embeddings=4096,
        truncate=False,
      ),
    ),
  ),
  # 8 layers: RoPE on 3 of 4 (chunks of 8, L2 QK-norm, Llama-3 scaling), NoPE every
  # 4th with temperature tuning (floor 4, so it acts within 32 tokens); MoE on odd
  # layers: sigmoid top-1 scaling the expert input, plus the shared expert.
  "llama4": (
    transformers.Llama4ForCausalLM,
    transformers.Llama4TextConfig,
    dict(
      num_hidden_layers=8,
      intermediate_size=32,
      intermediate_size_mlp=96,
      num_local_experts=4,
      num_experts_per_tok=1,
      interleave_moe_layer_step=2,
      attention_chunk_size=8,
      floor_scale=4,
      attn_scale=0.5,
      rope_parameters=dict(
        rope_type="llama3",
        rope_theta=500_000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
      ),
    ),
  ),
  # Lightning attention on layers 0 and 2 (depth-dependent decays, the second one
  # from the scanned period index), softmax attention with a window of 8 on 1 and 3;
  # DeepNorm residuals with every alpha and beta off 1; softmax top-2 of 8 renormalised.
  "minimax01": (
    transformers.MiniMaxForCausalLM,
    transformers.MiniMaxConfig,
    dict(
      num_hidden_layers=4,
      layer_types=["linear_attention", "full_attention"] * 2,
      sliding_window=8,
      block_size=16,
      intermediate_size=32,
      num_local_experts=8,
      num_experts_per_tok=2,
      full_attn_alpha_factor=1.7,
      full_attn_beta_factor=0.9,
      linear_attn_alpha_factor=1.3,
      linear_attn_beta_factor=1.1,
      mlp_alpha_factor=1.5,
      mlp_beta_factor=0.8,
    ),
  ),
  # QK-norm over all heads, half-rotary heads, sigmoid top-2 of 8 with the
  # correction bias, renormalised; Mixtral's hub tensor names.
  "minimax_m2": (
    transformers.MiniMaxM2ForCausalLM,
    transformers.MiniMaxM2Config,
    dict(
      num_hidden_layers=3,
      intermediate_size=32,
      num_local_experts=8,
      num_experts_per_tok=2,
      rope_parameters=dict(rope_type="default", rope_theta=10_000.0, partial_rotary_factor=0.5),
    ),
  ),
}
