"""Llama 4 (Meta): GQA with interleaved (complex-form) RoPE on 3 of every 4
layers, which attend within 8K chunks and L2-normalise q/k; every 4th layer is
NoPE, global, with temperature-tuned queries. MoE FFNs: a sigmoid top-1 router
whose weight scales the expert's input, plus an always-on shared expert. Scout
has 16 experts on every layer; Maverick 128 experts on every other layer.

Usage: --config configs/llama4.py:scout
"""

from configs import base

_LLAMA4 = dict(
  vocab_size=202_048,
  embed_dim=5120,
  num_layers=48,
  num_heads=40,
  num_kv_heads=8,
  head_dim=128,
  mlp_dim=16_384,  # dense layers (Maverick).
  norm_eps=1e-5,
  rope_theta=500_000.0,
  rope_interleave=True,
  rope_pattern=("rope", "rope", "rope", "nope"),
  attention_pattern=("chunked", "chunked", "chunked", "global"),
  attention_chunk=8192,
  nope_temperature_scale=0.1,
  nope_temperature_floor=8192,
)
_MOE = dict(
  top_k=1,
  expert_mlp_dim=8192,
  router="sigmoid",
  norm_topk=False,
  scale_inputs=True,
  num_shared_experts=1,
)

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      head_dim=32,
      norm_eps=1e-5,
      rope_interleave=True,
      rope_pattern=("rope", "rope", "rope", "nope"),
      attention_pattern=("chunked", "chunked", "chunked", "global"),
      attention_chunk=64,
      qk_norm="l2_rope_layers",
      nope_temperature_scale=0.1,
      nope_temperature_floor=32,
      ffn_pattern=("dense", "moe"),
      moe=dict(_MOE, num_experts=8, expert_mlp_dim=256),
    ),
    precision=base.CPU_PRECISION,
  ),
  # Llama 4 Scout (17B active, 16 experts): 109B total. Llama-3 RoPE scaling x16 over 8K.
  "scout": dict(
    model=dict(
      _LLAMA4,
      qk_norm="l2_rope_layers",
      rope_scaling=dict(
        type="llama3",
        factor=16.0,
        original_max_position=8192,
        low_freq_factor=1.0,
        high_freq_factor=1.0,
      ),
      ffn_pattern=("moe",),
      moe=dict(_MOE, num_experts=16),
    ),
  ),
  # Llama 4 Maverick (17B active, 128 experts): 400B total, MoE on odd layers, no QK-norm.
  "maverick": dict(
    model=dict(_LLAMA4, ffn_pattern=("dense", "moe"), moe=dict(_MOE, num_experts=128)),
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("llama4", PRESETS, preset)
