"""The OLMo lineage: OLMo 2 and Olmo 3 (post-norm, QK-norm over all heads)."""

from modeling.hf.families.common import (
  ATTENTION_BIAS,
  COMMON_FIELDS,
  FULL,
  LLAMA_DEFAULTS,
  SLIDING,
  Family,
  layer_types_layout,
)
from modeling.hf.tensors import POST_NORMS


def _olmo3_layer_types(hf):  # HF default: 3 sliding layers, then a full one.
  return hf.get("layer_types") or [
    SLIDING if (i + 1) % 4 else FULL for i in range(hf["num_hidden_layers"])
  ]


FAMILIES = {
  "olmo2": Family(
    name="olmo2",
    architecture="Olmo2ForCausalLM",
    fields={**COMMON_FIELDS, **ATTENTION_BIAS},
    defaults=dict(LLAMA_DEFAULTS, rms_norm_eps=1e-5),
    model=dict(norm_placement="post", qk_norm="full"),
    norms=POST_NORMS,
  ),
  # Olmo 3: Olmo 2's post-norm and QK-norm, a window on 3 of every 4 layers, YaRN (when
  # set) on the full-attention layers only.
  "olmo3": Family(
    name="olmo3",
    architecture="Olmo3ForCausalLM",
    layout=layer_types_layout,
    fields={**COMMON_FIELDS, **ATTENTION_BIAS},
    defaults=dict(LLAMA_DEFAULTS, rms_norm_eps=1e-5, sliding_window=4096, rope_theta=500_000.0),
    model=dict(norm_placement="post", qk_norm="full"),
    norms=POST_NORMS,
    layer_types=_olmo3_layer_types,
    nested_rope=True,
  ),
}
