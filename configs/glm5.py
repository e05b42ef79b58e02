"""GLM-5 (Zhipu AI; `glm_moe_dsa` in transformers): DeepSeek-V3.2's skeleton at a
new size. MLA (q LoRA 2048, kv LoRA 512, 192 + 64 dim query/key heads, 256 dim
values), DeepSeek Sparse Attention in every layer with a 32-head indexer that
rotates interleaved RoPE pairs, 3 dense layers, then 75 MoE layers of 256
sigmoid-routed experts (top-8, one group) plus one shared expert.

Usage: --config configs/glm5.py:full
"""

from configs import base
from configs.deepseek_v3 import MOE as DEEPSEEK_V3_MOE
from configs.deepseek_v3 import OBJECTIVE as DEEPSEEK_V3_OBJECTIVE
from configs.deepseek_v32 import PRESETS as DEEPSEEK_V32


def _glm5(preset: dict) -> dict:
  m = preset["model"]
  indexer = dict(m["mla"]["indexer"], rope_interleave=True)
  return dict(preset, model=dict(m, mla=dict(m["mla"], indexer=indexer)))


PRESETS = {
  # V3.2's tiny model with GLM-5's interleaved indexer RoPE.
  "tiny": _glm5(DEEPSEEK_V32["tiny"]),
  # GLM-5 report: 744B total, 40B active; 78 layers plus one MTP layer. The
  # sizes and rope_theta are the published config.json's.
  "full": dict(
    model=dict(
      vocab_size=154_880,
      embed_dim=6144,
      num_layers=78,
      num_heads=64,
      num_kv_heads=64,
      mlp_dim=12_288,
      attention="mla",
      mla=dict(
        q_lora_rank=2048,
        kv_lora_rank=512,
        qk_nope_head_dim=192,
        qk_rope_head_dim=64,
        v_head_dim=256,
        rope_interleave=True,
        indexer=dict(num_heads=32, head_dim=128, topk=2048, rope_interleave=True),
      ),
      ffn_pattern=("moe",),
      first_dense_layers=3,
      mtp=dict(depth=1),
      moe=dict(
        DEEPSEEK_V3_MOE,
        num_experts=256,
        top_k=8,
        expert_mlp_dim=2048,
        n_group=1,
        topk_group=1,
        num_shared_experts=1,
        routed_scaling=2.5,
      ),
      rope_theta=1_000_000.0,
      norm_eps=1e-5,
    ),
    objective=DEEPSEEK_V3_OBJECTIVE,
  ),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("glm5", PRESETS, preset)
