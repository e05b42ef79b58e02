"""DeepSeek-V3.2-Exp (DeepSeek-AI): DeepSeek-V3 plus DeepSeek Sparse Attention in
every layer. A lightning indexer (64 heads of 128 dims, ReLU scores, per-head
weights) picks each query's top-2048 keys; MLA attends to those only.

Training from a dense checkpoint goes in two stages (objective.indexer_stage):
`warmup` keeps attention dense and trains only the indexers on their KL to the
attention; `sparse` (the default) attends over the top-k and trains everything.

Usage: --config configs/deepseek_v32.py:full
"""

from configs import base
from configs.deepseek_v3 import PRESETS as DEEPSEEK_V3

_INDEXER = dict(num_heads=64, head_dim=128, topk=2048)


def _with_indexer(preset: dict, **indexer) -> dict:
  model = preset["model"]
  return dict(preset, model=dict(model, mla=dict(model["mla"], indexer=indexer)))


PRESETS = {
  # top-k 32 of 256-token rows: the indexer is active at the default seq_len.
  "tiny": _with_indexer(DEEPSEEK_V3["tiny"], num_heads=4, head_dim=32, topk=32),
  # DeepSeek-V3.2-Exp: V3's 671B (+ the 14B MTP module) and 0.85B of indexers.
  "full": _with_indexer(DEEPSEEK_V3["full"], **_INDEXER),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("deepseek_v32", PRESETS, preset)
