"""gpt-oss (OpenAI): GQA with q/k/v/o biases and per-head attention sinks,
alternating 128-token sliding-window and full layers, every layer MoE with a
biased router (softmax over the top-4 logits) and clamped-SwiGLU experts with
biases, YaRN x32 over 4K.

Usage: --config configs/gpt_oss.py:20b
"""

from configs import base

_GPT_OSS = dict(
  vocab_size=201_088,
  embed_dim=2880,
  num_heads=64,
  num_kv_heads=8,
  head_dim=64,
  mlp_dim=2880,  # unused: every layer is MoE.
  qkv_bias=True,
  out_bias=True,
  attention_sinks=True,
  attention_pattern=("local", "global"),
  sliding_window=128,
  rope_theta=150_000.0,
  # YaRN as released: the correction range is not rounded (truncate=False).
  rope_scaling=dict(
    type="yarn",
    factor=32.0,
    original_max_position=4096,
    beta_fast=32.0,
    beta_slow=1.0,
    truncate=False,
  ),
  norm_eps=1e-5,
  ffn_pattern=("moe",),
)
_MOE = dict(
  top_k=4,
  expert_mlp_dim=2880,
  router="softmax_topk",
  router_bias=True,
  activation="clamped_swiglu",
  expert_bias=True,
)

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      head_dim=32,
      qkv_bias=True,
      out_bias=True,
      attention_sinks=True,
      attention_pattern=("local", "global"),
      sliding_window=64,
      ffn_pattern=("moe",),
      moe=dict(_MOE, num_experts=16, top_k=4, expert_mlp_dim=128),
    ),
    precision=base.CPU_PRECISION,
  ),
  # gpt-oss-20b: 20.9B total, 3.6B active.
  "20b": dict(model=dict(_GPT_OSS, num_layers=24, moe=dict(_MOE, num_experts=32))),
  # gpt-oss-120b: 116.8B total, 5.1B active.
  "120b": dict(model=dict(_GPT_OSS, num_layers=36, moe=dict(_MOE, num_experts=128))),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("gpt_oss", PRESETS, preset)
