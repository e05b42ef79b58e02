"""Mistral (Mistral AI): Llama-style pre-norm GQA with SwiGLU.

Usage: --config configs/mistral.py:small_24b
"""

from configs import base

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      rope_theta=100_000_000.0,
      norm_eps=1e-5,
    ),
    precision=base.CPU_PRECISION,
  ),
  # Mistral-Small-24B-Base-2501: 23.6B params, head_dim 128, theta 1e8.
  "small_24b": dict(
    model=dict(
      vocab_size=131_072,
      embed_dim=5120,
      num_layers=40,
      num_heads=32,
      num_kv_heads=8,
      head_dim=128,
      mlp_dim=32_768,
      rope_theta=100_000_000.0,
      norm_eps=1e-5,
    )
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("mistral", PRESETS, preset)
