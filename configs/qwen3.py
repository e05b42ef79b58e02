"""Qwen3 dense (Alibaba): pre-norm, GQA, per-head QK-norm, SwiGLU, head_dim 128.

Usage: --config configs/qwen3.py:8b
"""

from configs import base

_QWEN3 = dict(
  vocab_size=151_936,
  head_dim=128,
  num_kv_heads=8,
  qk_norm="head",
  rope_theta=1_000_000.0,
  norm_eps=1e-6,
)

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      head_dim=32,
      qk_norm="head",
      rope_theta=1_000_000.0,
      tie_embeddings=True,
    ),
    precision=base.CPU_PRECISION,
  ),
  # Qwen3-0.6B: 0.6B params (0.44B without embeddings), tied.
  "0_6b": dict(
    model=dict(
      _QWEN3, embed_dim=1024, num_layers=28, num_heads=16, mlp_dim=3072, tie_embeddings=True
    )
  ),
  # Qwen3-8B: 8.2B params.
  "8b": dict(model=dict(_QWEN3, embed_dim=4096, num_layers=36, num_heads=32, mlp_dim=12_288)),
  # Qwen3-32B: 32.8B params.
  "32b": dict(model=dict(_QWEN3, embed_dim=5120, num_layers=64, num_heads=64, mlp_dim=25_600)),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("qwen3", PRESETS, preset)
