"""Qwen3-Next (Alibaba): a hybrid of gated DeltaNet (linear attention) and gated
softmax attention, 3 : 1 ([GDN, GDN, GDN, Attn] repeating), every layer MoE with
512 small experts (top-10) plus a sigmoid-gated shared expert; (1 + w) RMSNorms,
per-head QK-norm, RoPE on a quarter of each head, multi-token prediction.

Usage: --config configs/qwen3_next.py:80b_a3b
"""

from configs import base

_QWEN3_NEXT = dict(
  attention_pattern=("linear", "linear", "linear", "global"),
  attention_gate=True,
  norm="rms_one_plus",
  qk_norm="head",
  partial_rotary_factor=0.25,
  ffn_pattern=("moe",),
  mtp=dict(depth=1),
)

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      **_QWEN3_NEXT,
      head_dim=64,
      linear=dict(num_k_heads=2, num_v_heads=4, k_head_dim=32, v_head_dim=32, chunk=64),
      moe=dict(
        num_experts=16,
        top_k=4,
        expert_mlp_dim=64,
        router="softmax",
        norm_topk=True,
        num_shared_experts=1,
        shared_mlp_dim=64,
        shared_gate=True,
      ),  # fmt: skip
    ),
    precision=base.CPU_PRECISION,
  ),
  # Qwen3-Next-80B-A3B: 80B total, 3B active (model card; MTP module not counted).
  "80b_a3b": dict(
    model=dict(
      _QWEN3_NEXT,
      vocab_size=151_936,
      embed_dim=2048,
      num_layers=48,
      num_heads=16,
      num_kv_heads=2,
      head_dim=256,
      mlp_dim=5120,
      rope_theta=10_000_000.0,
      norm_eps=1e-6,
      linear=dict(num_k_heads=16, num_v_heads=32, k_head_dim=128, v_head_dim=128),
      moe=dict(
        num_experts=512,
        top_k=10,
        expert_mlp_dim=512,
        router="softmax",
        norm_topk=True,
        num_shared_experts=1,
        shared_mlp_dim=512,
        shared_gate=True,
      ),  # fmt: skip
    ),
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("qwen3_next", PRESETS, preset)
