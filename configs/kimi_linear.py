"""Kimi Linear (Moonshot AI): a hybrid of Kimi Delta Attention (linear attention
with a decay per key channel) and MLA without RoPE, 3 : 1 ([KDA, KDA, KDA, MLA]
repeating); a dense first layer, then DeepSeek-V3-style MoE (256 routed experts,
top-8 by sigmoid score with an aux-loss-free bias, routed scale 2.446) plus one
shared expert. Hub checkpoints give their own layer kinds in config.json
(`linear_attn_config.full_attn_layers`), which the loader follows.

Usage: --config configs/kimi_linear.py:48b_a3b
"""

from configs import base

_KIMI_LINEAR = dict(
  attention="mla",
  attention_pattern=("linear", "linear", "linear", "global"),
  rope_pattern=("nope",),  # MLA layers take no positions; KDA layers order tokens themselves
  ffn_pattern=("moe",),
  first_dense_layers=1,
)
_MOE = dict(
  router="sigmoid",
  norm_topk=True,
  aux_free_bias=True,
  n_group=1,
  topk_group=1,
  routed_scaling=2.446,
  num_shared_experts=1,
)

PRESETS = {
  "tiny": dict(
    model=dict(
      base.TINY_MODEL,
      **_KIMI_LINEAR,
      num_kv_heads=8,
      mla=dict(
        q_lora_rank=0, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32
      ),
      linear=dict(kind="kda", num_k_heads=4, num_v_heads=4, k_head_dim=32, v_head_dim=32),
      moe=dict(_MOE, num_experts=16, top_k=4, expert_mlp_dim=64),
    ),
    objective=dict(moe_bias_update_rate=0.01),  # a faster bias step for short CPU runs
    precision=base.CPU_PRECISION,
  ),
  # Kimi-Linear-48B-A3B: 48B total, 3B active (model card).
  "48b_a3b": dict(
    model=dict(
      _KIMI_LINEAR,
      vocab_size=163_840,
      embed_dim=2304,
      num_layers=27,
      num_heads=32,
      num_kv_heads=32,
      mlp_dim=9216,
      norm_eps=1e-5,
      mla=dict(
        q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128
      ),
      linear=dict(kind="kda", num_k_heads=32, num_v_heads=32, k_head_dim=128, v_head_dim=128),
      moe=dict(_MOE, num_experts=256, top_k=8, expert_mlp_dim=1024),
    ),
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("kimi_linear", PRESETS, preset)
