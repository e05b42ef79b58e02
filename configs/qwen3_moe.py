"""Qwen3-MoE (Alibaba): the Qwen3 attention (GQA, per-head QK-norm) with
128 fine-grained experts, softmax top-8 renormalised, no shared expert.

Usage: --config configs/qwen3_moe.py:30b_a3b
"""

from configs import base

_QWEN3_MOE = dict(
  vocab_size=151_936,
  head_dim=128,
  num_kv_heads=4,
  qk_norm="head",
  rope_theta=1_000_000.0,
  norm_eps=1e-6,
  ffn_pattern=("moe",),
)

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      head_dim=32,
      qk_norm="head",
      rope_theta=1_000_000.0,
      ffn_pattern=("moe",),
      moe=dict(num_experts=16, top_k=4, expert_mlp_dim=128, router="softmax", norm_topk=True),
    ),
    precision=base.CPU_PRECISION,
  ),
  # Qwen3-30B-A3B: 30.5B total, 3.3B active.
  "30b_a3b": dict(
    model=dict(
      _QWEN3_MOE,
      embed_dim=2048,
      num_layers=48,
      num_heads=32,
      mlp_dim=6144,
      moe=dict(num_experts=128, top_k=8, expert_mlp_dim=768, router="softmax", norm_topk=True),
    ),
    compute=dict(remat="full"),  # activations: each layer recomputed in the backward
  ),
  # Qwen3-235B-A22B: 235B total, 22B active.
  "235b_a22b": dict(
    model=dict(
      _QWEN3_MOE,
      embed_dim=4096,
      num_layers=94,
      num_heads=64,
      mlp_dim=12_288,
      moe=dict(num_experts=128, top_k=8, expert_mlp_dim=1536, router="softmax", norm_topk=True),
    ),
    # Each layer recomputed in the backward; expert-parallel all-to-all buffers at 2x a
    # device's mean load (dropless ones hold every token going to one device: 64x on
    # expert=64; overflow is dropped and logged); the head and its loss in 8 sequence
    # chunks (one chunk's [seq / 8, vocab] logits at a time).
    compute=dict(remat="full", moe_ep_capacity_factor=2.0, loss_chunks=8),
    # First moments in bfloat16 (DeepSeek-V3's recipe): the float32 state alone is
    # 54.7 GiB a device on 64 (fit table), 47.9 with them.
    precision=dict(opt_state_dtype="bfloat16"),
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("qwen3_moe", PRESETS, preset)
