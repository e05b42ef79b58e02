"""Full presets carry the published dimensions: total params within 1%."""

import pytest

from modeling.config import decoder_config
from tests.conftest import family_config
from trainer.state import param_count

PUBLISHED = [  # (family, preset, published total params)
  ("llama3", "8b", 8.03e9),  # Llama 3.1 8B model card
  ("llama3", "70b", 70.6e9),  # Llama 3.1 70B model card
  ("qwen3", "8b", 8.2e9),  # Qwen3-8B model card
  ("qwen3", "32b", 32.8e9),  # Qwen3-32B model card
  ("gemma3", "27b", 27.0e9),  # Gemma 3 report: 1,416M embedding + 25,600M non-embedding
  ("olmo2", "7b", 7.30e9),  # OLMo-2-1124-7B
  ("smollm3", "3b", 3.08e9),  # SmolLM3-3B
  ("mistral", "small_24b", 23.6e9),  # Mistral-Small-24B-Base-2501
  ("qwen2", "7b", 7.61e9),  # Qwen2.5-7B model card
  ("qwen2", "72b", 72.7e9),  # Qwen2.5-72B model card
]


@pytest.mark.parametrize("family,preset,published", PUBLISHED)
def test_full_preset_param_count_matches_published(family, preset, published):
  count = param_count(decoder_config(family_config(family, preset).model))
  assert abs(count - published) / published < 0.01, f"{family}:{preset} has {count / 1e9:.3f}B"
