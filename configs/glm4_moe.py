"""GLM-4.5 (Zhipu AI): GQA with q/k/v biases and half-rotary heads, leading dense
layers then DeepSeek-V3-style MoE (sigmoid scores, aux-free bias, 1 shared
expert, top-8).

Usage: --config configs/glm4_moe.py:air
"""

from configs import base

_GLM4_MOE = dict(
  vocab_size=151_552,
  num_heads=96,
  num_kv_heads=8,
  head_dim=128,
  qkv_bias=True,
  partial_rotary_factor=0.5,
  rope_theta=1_000_000.0,
  norm_eps=1e-5,
  ffn_pattern=("moe",),
)
_MOE = dict(
  top_k=8,
  router="sigmoid",
  norm_topk=True,
  aux_free_bias=True,
  num_shared_experts=1,
)

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      head_dim=32,
      qkv_bias=True,
      qk_norm="head",
      partial_rotary_factor=0.5,
      ffn_pattern=("moe",),
      first_dense_layers=1,
      moe=dict(_MOE, num_experts=16, top_k=4, expert_mlp_dim=128, routed_scaling=2.5),
    ),
    precision=base.CPU_PRECISION,
  ),
  # GLM-4.5-Air: 106B total, 12B active.
  "air": dict(
    model=dict(
      _GLM4_MOE,
      embed_dim=4096,
      num_layers=46,
      mlp_dim=10_944,
      first_dense_layers=1,
      moe=dict(_MOE, num_experts=128, expert_mlp_dim=1408, routed_scaling=1.0),
    ),
  ),
  # GLM-4.5: 355B total, 32B active.
  "full": dict(
    model=dict(
      _GLM4_MOE,
      embed_dim=5120,
      num_layers=92,
      mlp_dim=12_288,
      qk_norm="head",
      first_dense_layers=3,
      moe=dict(_MOE, num_experts=160, expert_mlp_dim=1536, routed_scaling=2.5),
    ),
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("glm4_moe", PRESETS, preset)
