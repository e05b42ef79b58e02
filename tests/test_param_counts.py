"""Full presets carry the published dimensions: total params within 1%."""

import pytest

from modeling.config import decoder_config
from tests.conftest import family_config
from trainer.state import param_count

PUBLISHED = [  # (family, preset, published total params)
  ("llama3", "8b", 8.03e9),  # Llama 3.1 8B model card
  ("llama3", "70b", 70.6e9),  # Llama 3.1 70B model card
  ("llama3", "405b", 405.9e9),  # Llama 3.1 405B model card (405,853,388,800)
  ("qwen3", "8b", 8.2e9),  # Qwen3-8B model card
  ("qwen3", "32b", 32.8e9),  # Qwen3-32B model card
  ("gemma3", "27b", 27.0e9),  # Gemma 3 report: 1,416M embedding + 25,600M non-embedding
  ("olmo2", "7b", 7.30e9),  # OLMo-2-1124-7B
  ("smollm3", "3b", 3.08e9),  # SmolLM3-3B
  ("mistral", "small_24b", 23.6e9),  # Mistral-Small-24B-Base-2501
  ("qwen2", "7b", 7.61e9),  # Qwen2.5-7B model card
  ("qwen2", "72b", 72.7e9),  # Qwen2.5-72B model card
  ("olmo3", "32b", 32e9),  # Olmo 3 report: 32B (64 layers, d 5120, 40 heads, 8 KV heads)
]


def test_olmo3_7b_has_olmo2_7b_params():
  """The Olmo 3 report keeps OLMo 2's 7B architecture (sliding windows add no
  params), so the count is OLMo-2-1124-7B's published 7.30B (tested above) up to
  the vocabulary rows (100,278 here, 100,352 padded there)."""
  count = lambda family: param_count(decoder_config(family_config(family, "7b").model))
  assert abs(count("olmo3") - count("olmo2")) / count("olmo2") < 1e-3


# Gemma 3n counts "effective" params: without the token embedding and the per-layer
# embedding (PLE) table, which stay out of accelerator memory in Google's runtime.
GEMMA3N_EFFECTIVE = [("e2b", 1.91e9), ("e4b", 4.0e9)]  # gemma-3n model cards


@pytest.mark.parametrize("preset,published", GEMMA3N_EFFECTIVE)
def test_gemma3n_effective_param_count_matches_published(preset, published):
  cfg = decoder_config(family_config("gemma3n", preset).model)
  ple = cfg.stream
  tables = cfg.vocab_size * cfg.embed_dim + ple.per_layer_vocab * cfg.num_layers * ple.per_layer_dim
  count = param_count(cfg) - tables
  assert abs(count - published) / published < 0.02, f"gemma3n:{preset} has {count / 1e9:.3f}B"


@pytest.mark.parametrize("family,preset,published", PUBLISHED)
def test_full_preset_param_count_matches_published(family, preset, published):
  count = param_count(decoder_config(family_config(family, preset).model))
  assert abs(count - published) / published < 0.01, f"{family}:{preset} has {count / 1e9:.3f}B"
