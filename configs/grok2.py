"""Grok 2.5 (xAI, open weights Aug 2025): 64 layers of GQA attention (64 query
heads, 8 key/value heads, head_dim 128) with tanh soft-capped logits (30), and
a "residual MoE" FFN: 8 GeGLU experts of width 16384 (softmax over soft-capped
router logits (30), top-2, weights not renormalised) beside an always-on GeGLU
MLP of width 32768, the sum scaled by 1/sqrt(2). Sandwich RMSNorms (before and
after attention and the FFN), embeddings scaled by sqrt(8192), output logits
scaled by 0.5 and then soft-capped at 50. RoPE theta 208533496 on the full head.

Not modelled: the config's attn_temperature_len=1024 (a query temperature the
inference kernels apply beyond position 1024).

Usage: --config configs/grok2.py:full
"""

import math

from configs import base

_GROK2 = dict(
  norm_placement="sandwich",
  activation="gelu_tanh",
  attn_logit_softcap=30.0,
  final_logit_softcap=50.0,
  logit_scale=0.5,
  embed_scale=True,
  norm_eps=1e-5,
  ffn_pattern=("moe",),
)
# The always-on MLP is the MoE layer's shared expert, so it sees every token.
_MOE = dict(
  num_experts=8,
  top_k=2,
  router="softmax",
  norm_topk=False,
  router_softcap=30.0,
  activation="gelu_tanh",
  num_shared_experts=1,
  output_scale=1 / math.sqrt(2),
)

PRESETS = {
  "tiny": dict(
    model=dict(
      _GROK2,
      **base.TINY_MODEL,
      rope_theta=10_000.0,
      moe=dict(
        _MOE,
        expert_mlp_dim=base.TINY_MODEL["mlp_dim"] // 2,
        shared_mlp_dim=base.TINY_MODEL["mlp_dim"],
      ),
    ),
    precision=base.CPU_PRECISION,
  ),
  # Grok 2.5 (xai-org/grok-2): ~270B total.
  "full": dict(
    model=dict(
      _GROK2,
      vocab_size=131_072,
      embed_dim=8192,
      num_layers=64,
      num_heads=64,
      num_kv_heads=8,
      head_dim=128,
      mlp_dim=32_768,
      rope_theta=208_533_496.0,
      moe=dict(_MOE, expert_mlp_dim=16_384, shared_mlp_dim=32_768),
    )
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("grok2", PRESETS, preset)
