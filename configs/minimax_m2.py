"""MiniMax-M2 (MiniMax): GQA with QK-RMSNorm over all heads and half-rotary
heads, every layer MoE: 256 fine-grained experts, top-8 by sigmoid score plus a
selection-only correction bias (aux-loss-free), renormalised, no shared expert.

Usage: --config configs/minimax_m2.py:full
"""

from configs import base

_MOE = dict(router="sigmoid", norm_topk=True, aux_free_bias=True)

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      head_dim=32,
      qk_norm="full",
      partial_rotary_factor=0.5,
      rope_theta=5_000_000.0,
      ffn_pattern=("moe",),
      moe=dict(_MOE, num_experts=16, top_k=4, expert_mlp_dim=128),
    ),
    objective=dict(moe_bias_update_rate=0.01),  # a faster bias step for short CPU runs
    precision=base.CPU_PRECISION,
  ),
  # MiniMax-M2: 230B total, 10B active.
  "full": dict(
    model=dict(
      vocab_size=200_064,
      embed_dim=3072,
      num_layers=62,
      num_heads=48,
      num_kv_heads=8,
      head_dim=128,
      mlp_dim=1536,  # unused: every layer is MoE.
      qk_norm="full",
      partial_rotary_factor=0.5,  # rotary_dim 64 of 128.
      rope_theta=5_000_000.0,
      norm_eps=1e-6,
      ffn_pattern=("moe",),
      moe=dict(_MOE, num_experts=256, top_k=8, expert_mlp_dim=1536),
    ),
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("minimax_m2", PRESETS, preset)
