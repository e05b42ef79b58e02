"""OLMo 2 (Ai2): post-norm (norm inside the residual after each sublayer) and
QK-norm over all heads at once, SwiGLU, RoPE theta 5e5.

Usage: --config configs/olmo2.py:7b
"""

from configs import base

_OLMO2 = dict(
  norm_placement="post", qk_norm="full", rope_theta=500_000.0, norm_eps=1e-6, vocab_size=100_352
)

PRESETS = {
  "tiny": dict(
    model=dict(_OLMO2, **dict(base.TINY_MODEL, num_kv_heads=8)),
    precision=base.CPU_PRECISION,
  ),
  # OLMo-2-1124-7B: 7.30B params.
  "7b": dict(
    model=dict(_OLMO2, embed_dim=4096, num_layers=32, num_heads=32, num_kv_heads=32, mlp_dim=11_008)
  ),
  # OLMo-2-0325-32B: 32.2B params.
  "32b": dict(
    model=dict(_OLMO2, embed_dim=5120, num_layers=64, num_heads=40, num_kv_heads=8, mlp_dim=27_648)
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("olmo2", PRESETS, preset)
