"""Kimi K2 (Moonshot AI): the DeepSeek-V3 architecture made sparser and wider in
experts (384 routed + 1 shared, top-8, one dense layer, no group limit), half
the attention heads (64), routed scale 2.827.

Usage: --config configs/kimi_k2.py:full
"""

from configs import base
from configs.deepseek_v3 import PRESETS as DEEPSEEK_V3

_MOE = dict(
  DEEPSEEK_V3["full"]["model"]["moe"],
  num_experts=384,
  n_group=1,
  topk_group=1,
  routed_scaling=2.827,
)

PRESETS = {
  "tiny": dict(
    model=dict(
      DEEPSEEK_V3["tiny"]["model"],
      mtp=dict(depth=0),  # K2 ships no multi-token-prediction module.
      moe=dict(DEEPSEEK_V3["tiny"]["model"]["moe"], n_group=1, topk_group=1, routed_scaling=2.827),
    ),
    objective=DEEPSEEK_V3["tiny"]["objective"],
    precision=base.CPU_PRECISION,
  ),
  # Kimi K2 (Base / Instruct): 1.04T total, 32.6B active (K2 report).
  "full": dict(
    model=dict(
      DEEPSEEK_V3["full"]["model"],
      vocab_size=163_840,
      num_heads=64,
      num_kv_heads=64,
      first_dense_layers=1,
      mtp=dict(depth=0),
      moe=_MOE,
      rope_theta=50_000.0,
      # Kimi-K2-Instruct: factor 32 over 4096 (the 0905 release uses 64), beta_fast 1.
      rope_scaling=dict(
        type="yarn",
        factor=32.0,
        original_max_position=4096,
        beta_fast=1.0,
        beta_slow=1.0,
        attention_factor=1.0,
      ),
    ),
    objective=DEEPSEEK_V3["full"]["objective"],
    # Each layer recomputed in the backward; expert-parallel all-to-all buffers at 2x a
    # device's mean load (dropless ones hold every token going to one device: 64x on
    # expert=64; overflow is dropped and logged); the head and its loss in 8 sequence
    # chunks (one chunk's [seq / 8, vocab] logits at a time).
    compute=dict(remat="full", moe_ep_capacity_factor=2.0, loss_chunks=8),
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("kimi_k2", PRESETS, preset)
