"""Gemma 3 text (Google): sandwich norms with (1+w) RMSNorm, QK-norm, GeGLU,
5 sliding-window layers to 1 global, local RoPE theta 1e4, scaled embeddings.

Usage: --config configs/gemma3.py:27b
"""

from configs import base

_GEMMA3 = dict(
  norm="rms_one_plus",
  norm_placement="sandwich",
  qk_norm="head",
  activation="gelu_tanh",
  embed_scale=True,
  tie_embeddings=True,
  attention_pattern=("local",) * 5 + ("global",),
  rope_theta=1_000_000.0,
  local_rope_theta=10_000.0,
  norm_eps=1e-6,
)

PRESETS = {
  "tiny": dict(
    model=dict(
      _GEMMA3,
      vocab_size=384,
      embed_dim=256,
      num_layers=6,
      num_heads=4,
      num_kv_heads=1,
      head_dim=64,
      mlp_dim=768,
      query_pre_attn_scalar=64.0,
      sliding_window=64,
    ),
    precision=base.CPU_PRECISION,
  ),
  # Gemma 3 1B: 1.0B params.
  "1b": dict(
    model=dict(
      _GEMMA3,
      vocab_size=262_144,
      embed_dim=1152,
      num_layers=26,
      num_heads=4,
      num_kv_heads=1,
      head_dim=256,
      mlp_dim=6912,
      query_pre_attn_scalar=256.0,
      sliding_window=512,
    )
  ),
  # Gemma 3 27B, text part: ~27.0B params (27.4B with the vision tower).
  "27b": dict(
    model=dict(
      _GEMMA3,
      vocab_size=262_208,
      embed_dim=5376,
      num_layers=62,
      num_heads=32,
      num_kv_heads=16,
      head_dim=128,
      mlp_dim=21_504,
      query_pre_attn_scalar=168.0,
      sliding_window=1024,
      rope_scaling=dict(type="linear", factor=8.0),
    )
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("gemma3", PRESETS, preset)
