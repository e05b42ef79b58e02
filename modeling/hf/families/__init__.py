"""Hugging Face name maps: one `Family` record per HF `model_type`, each lineage's in
its own file (the way torchtitan keeps a state-dict adapter per model), shared
pieces in `common.py`.

A family is data: which config.json keys fill which `config.model` fields, the
HF defaults for keys a config.json may omit, the `config.model` fields the HF
modeling code hard-codes, the config.json values it cannot take, the names of
the per-layer norm tensors and of any tensors named unlike the shared tables
(`tensors.py`), and small rules that give each layer's attention kind,
positional kind and FFN kind, and the inverse rule (`layout`) that writes those
layer kinds back as the keys its HF config reads. `loader.py` and `export.py`
hold the only logic; nothing there names a family.
"""

from modeling.hf.families import (
  deepseek,
  gemma,
  glm,
  gpt_oss,
  kimi,
  llama,
  llama4,
  minimax,
  mistral,
  olmo,
  qwen,
  smollm,
)
from modeling.hf.families.common import Family

LINEAGES = (
  llama,
  qwen,
  gemma,
  olmo,
  smollm,
  mistral,
  deepseek,
  kimi,
  glm,
  gpt_oss,
  llama4,
  minimax,
)
FAMILIES = {model_type: fam for lineage in LINEAGES for model_type, fam in lineage.FAMILIES.items()}
# Multimodal checkpoints whose language model we load: model_type -> (config.json key
# of the text config, the prefix of the text model's tensors).
TEXT_MODELS = dict(llama4.TEXT_MODELS)


def family(model_type) -> Family:
  if model_type not in FAMILIES:
    raise ValueError(
      f"config.json model_type={model_type!r} is not supported; supported: {', '.join(FAMILIES)}"
    )
  return FAMILIES[model_type]
