"""Qwen2.5 dense (Alibaba): pre-norm GQA with bias on q/k/v (not on the output
projection), SwiGLU, 152K vocabulary; YaRN stretches the 32K context to 128K.

Usage: --config configs/qwen2.py:7b   (--config configs/qwen2.py:7b_128k for YaRN)
"""

from configs import base

_QWEN2 = dict(
  vocab_size=152_064,
  qkv_bias=True,
  rope_theta=1_000_000.0,
  norm_eps=1e-6,
)
# The model cards' recipe for inputs past 32,768 tokens: YaRN, factor 4.
_YARN = dict(type="yarn", factor=4.0, original_max_position=32_768)
_7B = dict(_QWEN2, embed_dim=3584, num_layers=28, num_heads=28, num_kv_heads=4, mlp_dim=18_944)

PRESETS = {
  "tiny": dict(
    model=dict(base.TINY_MODEL, qkv_bias=True, rope_theta=1_000_000.0, norm_eps=1e-6),
    precision=base.CPU_PRECISION,
  ),
  # Qwen2.5-7B: 7.61B params, untied.
  "7b": dict(model=_7B),
  "7b_128k": dict(model=dict(_7B, rope_scaling=_YARN)),
  # Qwen2.5-72B: 72.7B params.
  "72b": dict(
    model=dict(_QWEN2, embed_dim=8192, num_layers=80, num_heads=64, num_kv_heads=8, mlp_dim=29_568)
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("qwen2", PRESETS, preset)
