"""MoE full presets carry the published dimensions: total and active params within 2%.

`active_param_count` counts everything but the unselected routed experts. The
publishers disagree on whether the embedding table and the output head are
"active", so each entry names what its published active count leaves out.
"""

import pytest

from modeling.config import decoder_config
from tests.conftest import family_config
from trainer.state import active_param_count, param_count

# (family, preset, published total, published active, left out of active)
PUBLISHED = [
  # DeepSeek-V3 report: 671B main model (the 14B MTP module is extra), 37B active.
  ("deepseek_v3", "full", 671e9, 37e9, ""),
  # Kimi K2 report: 1.04T total, 32.6B activated.
  ("kimi_k2", "full", 1.04e12, 32.6e9, ""),
  # Qwen3 model cards.
  ("qwen3_moe", "30b_a3b", 30.5e9, 3.3e9, ""),
  ("qwen3_moe", "235b_a22b", 235e9, 22e9, ""),
  # GLM-4.5 report: 106B / 12B (Air), 355B / 32B; active excludes embedding and head.
  ("glm4_moe", "air", 106e9, 12e9, "embed+head"),
  ("glm4_moe", "full", 355e9, 32e9, "embed+head"),
  # GLM-5 report: 744B / 40B (the MTP layer is extra), active as for GLM-4.5.
  ("glm5", "full", 744e9, 40e9, "embed+head"),
  # gpt-oss model card: 20.91B / 3.61B, 116.83B / 5.13B; active counts the unembedding only.
  ("gpt_oss", "20b", 20.91e9, 3.61e9, "embed"),
  ("gpt_oss", "120b", 116.83e9, 5.13e9, "embed"),
  # Llama 4 model cards: Scout 109B / 17B, Maverick 400B / 17B active.
  ("llama4", "scout", 109e9, 17e9, ""),
  ("llama4", "maverick", 400e9, 17e9, ""),
  # MiniMax-M2 model card: 230B total, 10B active (9.80B without embedding and head,
  # 11.03B with both; the card does not say, and 9.80B is the one within 2%).
  ("minimax_m2", "full", 230e9, 10e9, "embed+head"),
  # MiniMax-01 report: 456B total, 45.9B activated per token (without embedding and head).
  ("minimax01", "full", 456e9, 45.9e9, "embed+head"),
  # Qwen2 report / model card: Qwen2-57B-A14B, 57B total, 14B activated.
  ("qwen2_moe", "57b_a14b", 57e9, 14e9, ""),
  # Mistral AI: Mixtral 8x7B 46.7B / 12.9B active, 8x22B 141B / 39B active.
  ("mixtral", "8x7b", 46.7e9, 12.9e9, ""),
  ("mixtral", "8x22b", 141e9, 39e9, ""),
]


def _left_out(cfg, which: str) -> int:
  table = cfg.vocab_size * cfg.embed_dim
  return {"": 0, "embed": table, "embed+head": table * (1 if cfg.tie_embeddings else 2)}[which]


def _close(count, published):
  return abs(count - published) / published < 0.02


@pytest.mark.parametrize("family,preset,total,active,left_out", PUBLISHED)
def test_moe_preset_param_counts_match_published(family, preset, total, active, left_out):
  cfg = decoder_config(family_config(family, preset).model)
  count = param_count(cfg)
  assert _close(count, total), f"{family}:{preset} has {count / 1e9:.2f}B total"
  count = active_param_count(cfg) - _left_out(cfg, left_out)
  assert _close(count, active), f"{family}:{preset} has {count / 1e9:.2f}B active"


def test_deepseek_v32_is_v3_plus_one_lightning_indexer_per_layer():
  """V3.2-Exp's card gives V3's size (685B with the MTP module) and no separate active
  count; what it adds is exact: per layer, wq_b (q_lora 1536 -> 64 heads x 128), wk
  (7168 -> 128), the key LayerNorm (128 + 128) and weights_proj (7168 -> 64): 13.96M
  a layer, 0.85B in all, every one active (each token runs its layer's indexer)."""
  v3, v32 = (
    decoder_config(family_config(f, "full").model) for f in ("deepseek_v3", "deepseek_v32")
  )
  per_layer = 1536 * 64 * 128 + 7168 * 128 + 2 * 128 + 7168 * 64
  assert param_count(v32) - param_count(v3) == 61 * per_layer
  assert active_param_count(v32) - active_param_count(v3) == 61 * per_layer


def test_qwen3_next_total_matches_published():
  """Qwen3-Next-80B-A3B card: 80B total (its "3B activated" is rounded: 3.25B without
  embedding and head here, so only the total is held to 2%)."""
  cfg = decoder_config(family_config("qwen3_next", "80b_a3b").model)
  assert _close(param_count(cfg), 80e9), param_count(cfg)


def test_kimi_linear_count_is_its_layers_summed_by_hand():
  """Kimi-Linear-48B-A3B: 21 KDA and 6 NoPE-MLA layers, a dense layer 0, then 26 MoE
  layers of 256 routed + 1 shared expert. The card's "48B total, 3B active" is
  rounded: the routed experts alone hold 26 * 256 * 3 * 2304 * 1024 = 47.1B."""
  cfg = decoder_config(family_config("kimi_linear", "48b_a3b").model)
  e, hd, d, vocab = 2304, 32 * 128, 128, 163_840
  kda = 4 * e * hd + 3 * 4 * hd + 2 * (e * d + d * hd) + e * 32 + 32 + hd + d
  mla = e * 32 * 192 + e * (512 + 64) + 512 + 512 * 32 * 256 + 32 * 128 * e
  expert = 3 * e * 1024
  moe = 256 * e + 257 * expert  # router (its bias is not a param) + routed + shared
  layers = 21 * kda + 6 * mla + 3 * e * 9216 + 26 * moe + 27 * 2 * e
  assert param_count(cfg) == 2 * vocab * e + e + layers
  active = 2 * vocab * e + e + layers - 26 * 248 * expert
  assert active_param_count(cfg) == active
  assert round(active / 1e9) == 3  # the card's 3B active (3.49B)
