"""Llama 3 / 3.1 / 3.2 (Meta): pre-norm, GQA, SwiGLU, RoPE with Llama-3 scaling.

Usage: --config configs/llama3.py:8b
"""

from configs import base

_LLAMA3_ROPE = dict(
  type="llama3", factor=8.0, original_max_position=8192, low_freq_factor=1.0, high_freq_factor=4.0
)

PRESETS = {
  # Trains on the default corpus on a 2-core CPU in minutes (README run): 300 steps
  # of 16 x 256 bytes (1.2M tokens), peak lr 2e-3 after 30 warm-up steps.
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      rope_theta=500_000.0,
      rope_scaling=_LLAMA3_ROPE,
      norm_eps=1e-5,
    ),
    precision=base.CPU_PRECISION,
    train=dict(steps=300),
    optim=dict(lr=2e-3, warmup_steps=30),
  ),
  # Llama 3.2 1B: 1.24B params, tied embeddings.
  "1b": dict(
    model=dict(
      vocab_size=128_256,
      embed_dim=2048,
      num_layers=16,
      num_heads=32,
      num_kv_heads=8,
      head_dim=64,
      mlp_dim=8192,
      rope_theta=500_000.0,
      rope_scaling=dict(_LLAMA3_ROPE, factor=32.0),
      norm_eps=1e-5,
      tie_embeddings=True,
    )
  ),
  # Llama 3.1 8B: 8.03B params.
  "8b": dict(
    model=dict(
      vocab_size=128_256,
      embed_dim=4096,
      num_layers=32,
      num_heads=32,
      num_kv_heads=8,
      mlp_dim=14_336,
      rope_theta=500_000.0,
      rope_scaling=_LLAMA3_ROPE,
      norm_eps=1e-5,
    ),
    compute=dict(remat="full"),  # activations: each layer recomputed in the backward
  ),
  # Llama 3.1 70B: 70.6B params.
  "70b": dict(
    model=dict(
      vocab_size=128_256,
      embed_dim=8192,
      num_layers=80,
      num_heads=64,
      num_kv_heads=8,
      mlp_dim=28_672,
      rope_theta=500_000.0,
      rope_scaling=_LLAMA3_ROPE,
      norm_eps=1e-5,
    ),
    compute=dict(remat="full"),  # activations: each layer recomputed in the backward
  ),
  # Llama 3.1 405B: 405.9B params (126 layers = 2 x 63: pipeline stages 2, 3, 6, 7, 9, ...).
  "405b": dict(
    model=dict(
      vocab_size=128_256,
      embed_dim=16_384,
      num_layers=126,
      num_heads=128,
      num_kv_heads=8,
      mlp_dim=53_248,
      rope_theta=500_000.0,
      rope_scaling=_LLAMA3_ROPE,
      norm_eps=1e-5,
    ),
    compute=dict(remat="full"),
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("llama3", PRESETS, preset)
