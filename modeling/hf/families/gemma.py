"""The Gemma lineage: Gemma 3 (text) and Gemma 3n (text)."""

from modeling.hf.families.common import (
  ATTENTION_BIAS,
  COMMON_FIELDS,
  FULL,
  LLAMA_DEFAULTS,
  SLIDING,
  Family,
  layer_types_layout,
)
from modeling.hf.tensors import AS_IS, SANDWICH_NORMS, TRANSPOSE


def _gemma3_layer_types(hf):
  period = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
  return hf.get("layer_types") or [
    SLIDING if (i + 1) % period else FULL for i in range(hf["num_hidden_layers"])
  ]


def _gemma3n_layer_types(hf):  # HF default: 4 sliding layers, then a full one.
  return hf.get("layer_types") or [
    SLIDING if (i + 1) % 5 else FULL for i in range(hf["num_hidden_layers"])
  ]


def _gemma3n_derived(hf):
  """Per-layer FFN widths (MatFormer) and gate sparsity: HF gives one per layer."""
  n, widths = hf["num_hidden_layers"], hf["intermediate_size"]
  widths = list(widths) if isinstance(widths, (list, tuple)) else [widths] * n
  sparsity = hf.get("activation_sparsity_pattern")
  if sparsity is None:  # HF's default: the first 10 layers at 0.95 when there are more
    sparsity = [0.95] * 10 if n > 10 else []
  sparsity = [float(v) for v in sparsity]
  while sparsity and sparsity[-1] == 0.0:
    sparsity.pop()
  return {
    "mlp_dim": max(widths),
    "mlp_dims": tuple(widths) if len(set(widths)) > 1 else (),
    "activation_sparsity": tuple(sparsity),
  }


def _gemma3n_layout(m, lay):
  n = m.num_layers
  sparsity = list(m.activation_sparsity) + [0.0] * (n - len(m.activation_sparsity))
  return {
    "layer_types": lay.types,
    "intermediate_size": list(m.mlp_dims) or [m.mlp_dim] * n,
    "activation_sparsity_pattern": sparsity,
  }


# Gemma 3n: AltUp, LAuReL and the per-layer input gate beside Gemma's attention and MLP.
GEMMA3N_WEIGHTS = {
  "altup.router": ("altup.modality_router.weight", TRANSPOSE),
  "altup.router_norm.scale": ("altup.router_norm.weight", AS_IS),
  "altup.prediction_coefs": ("altup.prediction_coefs.weight", TRANSPOSE),
  "altup.correction_coefs": ("altup.correction_coefs.weight", TRANSPOSE),
  "altup.correct_output_scale": ("altup.correct_output_scale", AS_IS),
  "laurel.left": ("laurel.linear_left.weight", TRANSPOSE),
  "laurel.right": ("laurel.linear_right.weight", TRANSPOSE),
  "laurel.norm.scale": ("laurel.post_laurel_norm.weight", AS_IS),
  "per_layer.gate": ("per_layer_input_gate.weight", TRANSPOSE),
  "per_layer.proj": ("per_layer_projection.weight", TRANSPOSE),
  "per_layer.norm.scale": ("post_per_layer_input_norm.weight", AS_IS),
}


FAMILIES = {
  "gemma3_text": Family(
    name="gemma3",
    architecture="Gemma3ForCausalLM",
    layout=layer_types_layout,
    fields={
      **COMMON_FIELDS,
      **ATTENTION_BIAS,
      "activation": "hidden_activation",
      "query_pre_attn_scalar": "query_pre_attn_scalar",
      "final_logit_softcap": "final_logit_softcapping",
    },
    defaults=dict(
      LLAMA_DEFAULTS,
      tie_word_embeddings=True,
      head_dim=256,
      hidden_activation="gelu_pytorch_tanh",
      query_pre_attn_scalar=256,
      final_logit_softcapping=None,
      sliding_window=4096,
      rope_theta=1_000_000.0,
      rope_local_base_freq=10_000.0,
      max_position_embeddings=131_072,
    ),
    # HF Gemma3Attention stores `attn_logit_softcapping` but never passes it
    # to the attention function (transformers 5.x), so it must stay off here.
    model=dict(
      norm="rms_one_plus",
      norm_placement="sandwich",
      qk_norm="head",
      embed_scale=True,
      attn_logit_softcap=0.0,
    ),
    norms=SANDWICH_NORMS,
    layer_types=_gemma3_layer_types,
    local_theta_key="rope_local_base_freq",
    rejected={"use_bidirectional_attention": True},
  ),
  # Gemma 3n (text): Gemma 3's attention with v-norm and no 1/sqrt(d) scale, AltUp
  # streams, LAuReL, per-layer embeddings, KV sharing in the last layers, sparse
  # gates in the first ones, per-layer FFN widths (MatFormer).
  "gemma3n_text": Family(
    name="gemma3n",
    architecture="Gemma3nForCausalLM",
    layout=_gemma3n_layout,
    fields={
      **{f: k for f, k in COMMON_FIELDS.items() if f != "mlp_dim"},
      **ATTENTION_BIAS,
      "activation": "hidden_activation",
      "final_logit_softcap": "final_logit_softcapping",
      "per_layer_input.dim": "hidden_size_per_layer_input",
      "per_layer_input.vocab_size": "vocab_size_per_layer_input",
      "altup.num_inputs": "altup_num_inputs",
      "altup.active_idx": "altup_active_idx",
      "altup.coef_clip": "altup_coef_clip",
      "altup.correct_scale": "altup_correct_scale",
      "altup.laurel_rank": "laurel_rank",
      "kv_shared_layers": "num_kv_shared_layers",
    },
    defaults=dict(
      LLAMA_DEFAULTS,
      tie_word_embeddings=True,
      head_dim=256,
      hidden_activation="gelu_pytorch_tanh",
      final_logit_softcapping=30.0,
      sliding_window=512,
      rope_theta=1_000_000.0,
      rope_local_base_freq=10_000.0,
      max_position_embeddings=32_768,
      vocab_size_per_layer_input=262_144,
      hidden_size_per_layer_input=256,
      altup_num_inputs=4,
      altup_active_idx=0,
      altup_coef_clip=120.0,
      altup_correct_scale=True,
      laurel_rank=64,
      num_kv_shared_layers=15,
    ),
    model=dict(
      norm="rms",
      norm_placement="sandwich",
      qk_norm="head",
      v_norm=True,
      query_pre_attn_scalar=1.0,  # no 1/sqrt(head_dim): the QK-norms set the scale
      embed_scale=True,
    ),
    derived=_gemma3n_derived,
    norms=SANDWICH_NORMS,
    layer_types=_gemma3n_layer_types,
    weights=GEMMA3N_WEIGHTS,
    local_theta_key="rope_local_base_freq",
  ),
}
