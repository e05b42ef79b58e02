"""Olmo 3 (Ai2): Olmo 2's post-norm and QK-norm over all heads, plus a 4096-token
sliding window on 3 of every 4 layers; YaRN (factor 8 over 8K, for 64K) on the
full-attention layers only, the windowed ones keep plain RoPE.

Usage: --config configs/olmo3.py:7b
"""

from configs import base

_OLMO3 = dict(
  norm_placement="post",
  qk_norm="full",
  norm_eps=1e-6,
  vocab_size=100_278,
  attention_pattern=("local", "local", "local", "global"),
  sliding_window=4096,
  rope_theta=500_000.0,
  local_rope_theta=500_000.0,  # the windowed layers: the same theta, no YaRN
  rope_scaling=dict(type="yarn", factor=8.0, original_max_position=8192),
)

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      norm_placement="post",
      qk_norm="full",
      norm_eps=1e-6,
      attention_pattern=("local", "local", "local", "global"),
      sliding_window=64,
      rope_theta=500_000.0,
    ),
    precision=base.CPU_PRECISION,
  ),
  # Olmo-3-1025-7B: Olmo 2 7B's dimensions (multi-head attention).
  "7b": dict(
    model=dict(_OLMO3, embed_dim=4096, num_layers=32, num_heads=32, num_kv_heads=32, mlp_dim=11_008)
  ),
  # Olmo-3-1125-32B: Olmo 2 32B's dimensions (GQA, 8 kv heads).
  "32b": dict(
    model=dict(_OLMO3, embed_dim=5120, num_layers=64, num_heads=40, num_kv_heads=8, mlp_dim=27_648)
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("olmo3", PRESETS, preset)
