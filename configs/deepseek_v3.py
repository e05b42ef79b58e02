"""DeepSeek-V3 (DeepSeek-AI): MLA attention, 3 dense layers then fine-grained
MoE (256 routed + 1 shared expert, top-8 of 8 groups limited to 4, sigmoid
scores, aux-loss-free bias), YaRN for long context.

Usage: --config configs/deepseek_v3.py:full
"""

from configs import base

_MLA = dict(
  q_lora_rank=1536,
  kv_lora_rank=512,
  qk_nope_head_dim=128,
  qk_rope_head_dim=64,
  v_head_dim=128,
  rope_interleave=True,
)
MOE = dict(
  num_experts=256,
  top_k=8,
  expert_mlp_dim=2048,
  router="sigmoid",
  norm_topk=True,
  n_group=8,
  topk_group=4,
  routed_scaling=2.5,
  aux_free_bias=True,
  num_shared_experts=1,
)
# The complementary sequence-wise balance loss (alpha = 1e-4) beside the aux-free bias.
OBJECTIVE = dict(moe_seq_aux_weight=1e-4)

PRESETS = {
  "tiny": dict(
    model=dict(
      vocab_size=384,
      embed_dim=128,
      num_layers=4,
      num_heads=4,
      num_kv_heads=4,
      mlp_dim=384,
      attention="mla",
      mla=dict(
        _MLA,
        q_lora_rank=64,
        kv_lora_rank=32,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
      ),
      ffn_pattern=("moe",),
      first_dense_layers=1,
      mtp=dict(depth=1),
      moe=dict(MOE, num_experts=16, top_k=4, expert_mlp_dim=64, n_group=4, topk_group=2),
    ),
    # Short CPU runs need a faster bias step than V3's 0.001 to balance within 300 steps.
    objective=dict(OBJECTIVE, moe_bias_update_rate=0.01),
    precision=base.CPU_PRECISION,
  ),
  # A DeepSeek-V3-style MoE that trains on one 80 GB GPU (scripts/bench.py mfu): MLA,
  # 32 fine-grained experts (top 4 + 2 shared), 1 dense layer first, MTP; ~1.7B
  # params, ~0.5B active.
  "small": dict(
    model=dict(
      vocab_size=129_280,
      embed_dim=1536,
      num_layers=16,
      num_heads=12,
      num_kv_heads=12,
      mlp_dim=4096,
      attention="mla",
      mla=dict(_MLA, q_lora_rank=768),
      ffn_pattern=("moe",),
      first_dense_layers=1,
      mtp=dict(depth=1),
      moe=dict(MOE, num_experts=32, top_k=4, expert_mlp_dim=512, n_group=4, topk_group=2),
    ),
    objective=OBJECTIVE,
  ),
  # DeepSeek-V3: 671B main model (+ the 14B MTP module, not in param_count), 37B active.
  "full": dict(
    model=dict(
      vocab_size=129_280,
      embed_dim=7168,
      num_layers=61,
      num_heads=128,
      num_kv_heads=128,
      mlp_dim=18_432,
      attention="mla",
      mla=dict(_MLA, mscale_all_dim=1.0),
      ffn_pattern=("moe",),
      first_dense_layers=3,
      mtp=dict(depth=1),
      moe=MOE,
      rope_theta=10_000.0,
      rope_scaling=dict(
        type="yarn",
        factor=40.0,
        original_max_position=4096,
        beta_fast=32.0,
        beta_slow=1.0,
        attention_factor=1.0,
      ),
      norm_eps=1e-6,
    ),
    objective=OBJECTIVE,
    # Each layer recomputed in the backward; expert-parallel all-to-all buffers at 2x a
    # device's mean load (dropless ones hold every token going to one device: 64x on
    # expert=64; overflow is dropped and logged); the head and its loss in 8 sequence
    # chunks (one chunk's [seq / 8, vocab] logits at a time).
    compute=dict(remat="full", moe_ep_capacity_factor=2.0, loss_chunks=8),
    precision=dict(opt_state_dtype="bfloat16"),  # V3 keeps AdamW moments in BF16 (here: mu)
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("deepseek_v3", PRESETS, preset)
