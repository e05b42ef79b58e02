"""SmolLM3: NoPE on every 4th layer."""

from modeling.hf.families.common import (
  ATTENTION_BIAS,
  COMMON_FIELDS,
  FULL,
  LLAMA_DEFAULTS,
  SLIDING,
  Family,
  no_rope_layers,
)
from modeling.hf.tensors import PRE_NORMS


def _smollm3_layer_types(hf):  # HF windows only the NoPE layers.
  if hf.get("layer_types"):
    return hf["layer_types"]
  window = hf["use_sliding_window"] and hf["sliding_window"]
  return [SLIDING if window and not rope else FULL for rope in no_rope_layers(hf)]


def _smollm3_layout(m, lay):
  return {
    "no_rope_layers": [int(r) for r in lay.ropes],
    "use_sliding_window": SLIDING in lay.types,
    "layer_types": lay.types,
  }


FAMILIES = {
  "smollm3": Family(
    name="smollm3",
    architecture="SmolLM3ForCausalLM",
    layout=_smollm3_layout,
    fields={**COMMON_FIELDS, **ATTENTION_BIAS, "mlp_bias": "mlp_bias"},
    defaults=dict(
      LLAMA_DEFAULTS,
      tie_word_embeddings=True,
      no_rope_layers=None,
      no_rope_layer_interval=4,
      use_sliding_window=False,
      sliding_window=None,
      rope_theta=2_000_000.0,
      max_position_embeddings=32768,
    ),
    model={},
    norms=PRE_NORMS,
    layer_types=_smollm3_layer_types,
    rope_layers=no_rope_layers,
  ),
}
