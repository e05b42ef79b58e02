"""Qwen2-MoE (Alibaba; the Qwen2.5 generation's MoE is this architecture):
Qwen2's attention (q/k/v bias) with 64 fine-grained experts, softmax top-8 (not
renormalised), plus one always-on shared expert scaled by a sigmoid gate.

Usage: --config configs/qwen2_moe.py:57b_a14b
"""

from configs import base

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      qkv_bias=True,
      rope_theta=1_000_000.0,
      norm_eps=1e-6,
      ffn_pattern=("moe",),
      moe=dict(
        num_experts=16,
        top_k=4,
        expert_mlp_dim=128,
        router="softmax",
        num_shared_experts=1,
        shared_mlp_dim=384,
        shared_gate=True,
      ),
    ),
    precision=base.CPU_PRECISION,
  ),
  # Qwen2-57B-A14B: 57B total, 14B active.
  "57b_a14b": dict(
    model=dict(
      vocab_size=151_936,
      embed_dim=3584,
      num_layers=28,
      num_heads=28,
      num_kv_heads=4,
      mlp_dim=18_944,
      qkv_bias=True,
      rope_theta=1_000_000.0,
      norm_eps=1e-6,
      ffn_pattern=("moe",),
      moe=dict(
        num_experts=64,
        top_k=8,
        expert_mlp_dim=2560,
        router="softmax",
        num_shared_experts=1,
        shared_mlp_dim=20_480,
        shared_gate=True,
      ),
    )
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("qwen2_moe", PRESETS, preset)
