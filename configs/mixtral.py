"""Mixtral (Mistral AI): the classic sparse MoE baseline. Llama-style GQA
attention, every FFN replaced by 8 SwiGLU experts of the full FFN width, softmax
router, top-2 renormalised, no shared expert.

Usage: --config configs/mixtral.py:8x7b
"""

from configs import base

_MOE = dict(num_experts=8, top_k=2, router="softmax", norm_topk=True)
_MIXTRAL = dict(vocab_size=32_000, num_kv_heads=8, norm_eps=1e-5, ffn_pattern=("moe",))

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      rope_theta=1_000_000.0,
      norm_eps=1e-5,
      ffn_pattern=("moe",),
      moe=dict(_MOE, expert_mlp_dim=base.TINY_MODEL["mlp_dim"] // 2),
    ),
    precision=base.CPU_PRECISION,
  ),
  # Mixtral-8x7B-v0.1: 46.7B total, 12.9B active.
  "8x7b": dict(
    model=dict(
      _MIXTRAL,
      embed_dim=4096,
      num_layers=32,
      num_heads=32,
      mlp_dim=14_336,
      rope_theta=1_000_000.0,
      moe=dict(_MOE, expert_mlp_dim=14_336),
    )
  ),
  # Mixtral-8x22B-v0.1: 141B total, 39B active; 32K vocabulary plus 768 control tokens.
  "8x22b": dict(
    model=dict(
      _MIXTRAL,
      vocab_size=32_768,
      embed_dim=6144,
      num_layers=56,
      num_heads=48,
      mlp_dim=16_384,
      rope_theta=1_000_000.0,
      moe=dict(_MOE, expert_mlp_dim=16_384),
    )
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("mixtral", PRESETS, preset)
