"""SmolLM3 (Hugging Face): Llama-style GQA with NoPE on every 4th layer, tied
embeddings, RoPE theta 2e6 (HF SmolLM3Config default; shared reference §10).

Usage: --config configs/smollm3.py:3b
"""

from configs import base

_NOPE_EVERY_4TH = ("rope", "rope", "rope", "nope")

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      rope_pattern=_NOPE_EVERY_4TH,
      rope_theta=2_000_000.0,
      tie_embeddings=True,
    ),
    precision=base.CPU_PRECISION,
  ),
  # SmolLM3-3B: 3.08B params.
  "3b": dict(
    model=dict(
      vocab_size=128_256,
      embed_dim=2048,
      num_layers=36,
      num_heads=16,
      num_kv_heads=4,
      mlp_dim=11_008,
      rope_pattern=_NOPE_EVERY_4TH,
      rope_theta=2_000_000.0,
      tie_embeddings=True,
    )
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("smollm3", PRESETS, preset)
