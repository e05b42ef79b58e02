"""MiniMax-01 (MiniMax-Text-01, Jan 2025; MiniMax-M1 is the same network):
lightning attention (linear attention with a fixed decay per head, ALiBi slopes
shrinking with depth, SiLU'd q/k/v, an RMSNorm over all heads and a sigmoid output
gate) on 7 of every 8 layers, GQA softmax attention on the 8th; every FFN 32
SwiGLU experts of width 9216 under a softmax router, top-2 renormalised. The
residual is DeepNorm-style: the stream is normed before each sublayer and kept
normed, x = alpha * x + f(x), alpha = (2 * 80)**0.25 = 3.5566 everywhere.

RoPE: the release rotates 64 of each head's 128 dims (its `rotary_dim`);
transformers' MiniMax code rotates the whole head, so the full preset (the
release) does not export to it, while checkpoints in transformers' layout load
and export with a whole-head rotation.

Usage: --config configs/minimax01.py:full
"""

from configs import base

_MOE = dict(router="softmax", norm_topk=True)
_MINIMAX01 = dict(norm_placement="deepnorm", norm_eps=1e-5, ffn_pattern=("moe",))
_ALPHA = (2 * 80) ** 0.25  # DeepNorm's (2N)^(1/4) for the 80-layer release


def _residual(alpha: float) -> dict:
  return dict(attn_alpha=alpha, linear_alpha=alpha, mlp_alpha=alpha)


PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      **_MINIMAX01,
      attention_pattern=("linear", "global"),
      rope_theta=1_000_000.0,
      head_dim=32,
      linear=dict(kind="lightning", num_k_heads=8, num_v_heads=8, k_head_dim=32, v_head_dim=32),
      residual_scale=_residual((2 * base.TINY_MODEL["num_layers"]) ** 0.25),
      moe=dict(_MOE, num_experts=8, top_k=2, expert_mlp_dim=base.TINY_MODEL["mlp_dim"] // 2),
    ),
    precision=base.CPU_PRECISION,
  ),
  # MiniMax-Text-01: 456B total, 45.9B active per token (the report's active count
  # leaves out the embedding and the output head).
  "full": dict(
    model=dict(
      _MINIMAX01,
      vocab_size=200_064,
      embed_dim=6144,
      num_layers=80,
      num_heads=64,
      num_kv_heads=8,
      head_dim=128,
      mlp_dim=9216,
      attention_pattern=("linear",) * 7 + ("global",),
      rope_theta=10_000_000.0,
      partial_rotary_factor=0.5,
      linear=dict(
        kind="lightning", num_k_heads=64, num_v_heads=64, k_head_dim=128, v_head_dim=128, chunk=256
      ),
      residual_scale=_residual(_ALPHA),
      moe=dict(_MOE, num_experts=32, top_k=2, expert_mlp_dim=9216),
    ),
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("minimax01", PRESETS, preset)
