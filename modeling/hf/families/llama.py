"""Llama 3 (HF `llama`)."""

from modeling.hf.families.common import (
  ATTENTION_BIAS,
  COMMON_FIELDS,
  LLAMA_DEFAULTS,
  Family,
)
from modeling.hf.tensors import PRE_NORMS

FAMILIES = {
  "llama": Family(
    name="llama3",
    architecture="LlamaForCausalLM",
    fields={**COMMON_FIELDS, **ATTENTION_BIAS, "mlp_bias": "mlp_bias"},
    defaults=LLAMA_DEFAULTS,
    model={},
    norms=PRE_NORMS,
  ),
}
