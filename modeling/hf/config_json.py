"""Hugging Face config.json -> `config.model` (`model_config_from_hf`), driven by
the per-family tables in `families/`: field maps, defaults, hard-coded values,
layer-kind rules and RoPE formats."""

import math

import ml_collections

from configs import base
from modeling.hf import families, tensors
from modeling.hf.families.common import ACTIVATIONS, CHUNKED, DENSE, FULL, LINEAR, SLIDING


def text_model(hf_config: dict) -> tuple[dict, str]:
  """(the language model's config, its tensors' name prefix) of a config.json."""
  if hf_config.get("model_type") in families.TEXT_MODELS:
    key, prefix = families.TEXT_MODELS[hf_config["model_type"]]
    if not isinstance(hf_config.get(key), dict):
      raise ValueError(f"config.json model_type={hf_config['model_type']!r} has no {key!r}")
    return hf_config[key], prefix
  return hf_config, ""


def model_config_from_hf(hf_config: dict) -> ml_collections.ConfigDict:
  """config.json (as a dict) -> locked jaxfrontier config with `model` filled in."""
  hf_config, _ = text_model(hf_config)
  fam = families.family(hf_config.get("model_type"))
  hf = {**fam.defaults, **{fam.aliases.get(k, k): v for k, v in hf_config.items()}}
  _check_supported(hf, fam)
  config = base.get_config()
  m = config.model
  m.family = fam.name
  for field, key in fam.fields.items():
    _set(m, field, _field_value(m, field, hf, key))
  for field, value in {**fam.model, **fam.derived(hf)}.items():
    _set(m, field, value)
  types = _layer_patterns(m, hf, fam)
  _ffn_patterns(m, hf, fam)
  _rope(m, hf, fam, types)
  m.max_len = int(hf.get("max_position_embeddings") or 0)
  if fam.extra_layers_key == tensors.MTP_KEY:  # DeepSeek / GLM: MTP modules as extra layers
    m.mtp.depth = int(hf.get(tensors.MTP_KEY) or 0)
  config.lock()
  return config


def _check_supported(hf, fam):
  model_type = hf["model_type"]
  if hf.get("quantization_config"):
    method = hf["quantization_config"].get("quant_method")
    raise ValueError(
      f"config.json quantization_config (quant_method={method!r}) is not supported; "
      "load a dequantized (bf16/fp32) checkpoint"
    )
  for key, bad in fam.rejected.items():
    if hf.get(key) == bad:
      raise ValueError(f"config.json {key}={bad!r} is not supported for {model_type}")
  for key, only in fam.required.items():
    if key in hf and hf[key] != only:
      raise ValueError(
        f"config.json {key}={hf[key]!r} is not supported for {model_type}; only {only!r}"
      )


def field_node(m, field):
  """("moe.top_k") -> (m.moe, "top_k")."""
  *parents, leaf = field.split(".")
  for name in parents:
    m = m[name]
  return m, leaf


def _set(m, field, value):
  node, leaf = field_node(m, field)
  node[leaf] = value


def _field_value(m, field, hf, key):
  key, translate = key if isinstance(key, tuple) else (key, None)
  if key not in hf:
    raise ValueError(f"config.json has no {key!r} (needed for model.{field})")
  value, (node, leaf) = hf[key], field_node(m, field)
  if translate is not None:
    if value not in translate:
      raise ValueError(
        f"config.json {key}={value!r} is not supported; use one of {list(translate)}"
      )
    return translate[value]
  if value is None:  # HF's "derive it": kv heads = heads; 0 / off for the rest.
    return m.num_heads if field == "num_kv_heads" else type(node[leaf])()
  if field == "activation":
    if value not in ACTIVATIONS:
      raise ValueError(
        f"config.json {key}={value!r} is not supported; "
        f"use one of {', '.join(ACTIVATIONS)}"
      )
    return ACTIVATIONS[value]
  return type(node[leaf])(value)


def _period(seq) -> tuple:
  """Shortest prefix p with seq[i] == p[i % len(p)] for every i."""
  for n in range(1, len(seq) + 1):
    if all(seq[i] == seq[i % n] for i in range(len(seq))):
      return tuple(seq[:n])
  return tuple(seq)


def _layer_patterns(m, hf, fam) -> list:
  """Fills attention/rope patterns and the window; returns the HF layer types."""
  types, ropes = list(fam.layer_types(hf)), list(fam.rope_layers(hf))
  for name, seq in (("layer_types", types), ("no_rope_layers", ropes)):
    if len(seq) != m.num_layers:
      raise ValueError(f"config.json {name} has {len(seq)} entries for {m.num_layers} layers")
  unknown = sorted(set(types) - {FULL, SLIDING, CHUNKED, LINEAR})
  if unknown:
    raise ValueError(
      f"config.json layer_types {unknown} are not supported; use {FULL}, {SLIDING}, "
      f"{CHUNKED}, {LINEAR}"
    )
  if SLIDING in types:
    if not hf.get("sliding_window"):
      raise ValueError("config.json has sliding_attention layers but no sliding_window")
    m.sliding_window = int(hf["sliding_window"])
  if CHUNKED in types and hf.get("attention_chunk_size"):  # no chunk size: HF attends fully.
    m.attention_chunk = int(hf["attention_chunk_size"])
  kinds = {
    SLIDING: "local",
    CHUNKED: "chunked" if m.attention_chunk else "global",
    LINEAR: "linear",
  }
  m.attention_pattern = _period([kinds.get(t, "global") for t in types])
  m.rope_pattern = _period(["rope" if r else "nope" for r in ropes])
  return types


def _dense_prefix_and_period(kinds) -> tuple[int, tuple]:
  """Shortest pattern p, then fewest leading dense layers f, with kinds[i] == p[i % len(p)]
  for every i >= f (patterns index layers absolutely, from 0)."""
  leading = next((i for i, k in enumerate(kinds) if k != DENSE), len(kinds))
  for n in range(1, len(kinds) + 1):
    for first in range(min(leading, len(kinds) - n) + 1):
      pattern = [None] * n
      for i in range(first, first + n):
        pattern[i % n] = kinds[i]
      if all(kinds[i] == pattern[i % n] for i in range(first, len(kinds))):
        return first, tuple(pattern)
  raise AssertionError("unreachable: n = len(kinds), first = 0 always fits")


def _ffn_patterns(m, hf, fam):
  kinds = list(fam.ffn_layers(hf))
  if len(kinds) != m.num_layers:
    raise ValueError(f"config.json gives {len(kinds)} FFN layer kinds for {m.num_layers} layers")
  m.first_dense_layers, m.ffn_pattern = _dense_prefix_and_period(kinds)


# -------------------------------------------------------------------- rope


def _rope_parameters(hf, fam) -> tuple[dict, dict]:
  """(full-attention, sliding-attention) rope dicts in the `rope_parameters` format."""
  params = hf.get("rope_parameters")
  if params is None:  # Older config.json: rope_theta + rope_scaling (+ a local theta).
    glob = {"rope_theta": hf["rope_theta"], **(hf.get("rope_scaling") or {})}
    local = {"rope_theta": hf[fam.local_theta_key]} if fam.local_theta_key else glob
  elif FULL in params or SLIDING in params:  # Nested per layer type.
    glob, local = params.get(FULL) or {}, params.get(SLIDING) or {}
    local = {"rope_theta": hf[fam.local_theta_key], **local} if fam.local_theta_key else local
  else:
    glob = local = params
  glob = {"rope_theta": hf["rope_theta"], **glob}
  local = {"rope_theta": hf["rope_theta"], **local}
  return glob, local


def _rope_type(params) -> str:
  return params.get("rope_type") or params.get("type") or "default"


def _rope(m, hf, fam, types):
  glob, local = _rope_parameters(hf, fam)
  # Hub MiniMax-M2 files give the rotated width as `rotary_dim` instead of a factor.
  head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
  legacy = hf.get("rotary_dim") and hf["rotary_dim"] / head_dim
  partial = [
    p.get("partial_rotary_factor", hf.get("partial_rotary_factor", legacy)) or 1.0
    for p in (glob, local)
  ]
  if partial[0] != partial[1] or (partial[0] != 1.0 and not fam.partial_rotary):
    raise ValueError(
      f"config.json partial_rotary_factor={partial[0]} is not supported "
      f"for {hf['model_type']} (its attention rotates the whole head)"
    )
  m.partial_rotary_factor = float(partial[0])
  m.rope_theta = float(glob["rope_theta"])
  m.rope_scaling.update(_scaling(glob, hf))
  if m.attention == "mla":  # HF MLA also scales the softmax by mscale(factor, mscale_all_dim)**2.
    m.mla.mscale_all_dim = float(glob.get("mscale_all_dim") or 0.0)
  if SLIDING in types and local != glob:
    if _rope_type(local) != "default":
      raise ValueError(
        f"config.json sliding_attention rope_type={_rope_type(local)!r} is not "
        "supported; sliding layers take only a theta (rope_type 'default')"
      )
    m.local_rope_theta = float(local["rope_theta"])


def yarn_mscale(factor, mscale=1.0):
  return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _scaling(p, hf) -> dict:
  """One rope dict -> config.model.rope_scaling fields (HF's own defaults)."""
  kind = _rope_type(p)
  original = p.get("original_max_position_embeddings") or hf["max_position_embeddings"]
  if kind == "default":
    return dict(type="none")
  if kind == "linear":
    return dict(type="linear", factor=float(p["factor"]))
  if kind == "llama3":
    return dict(
      type="llama3",
      factor=float(p["factor"]),
      original_max_position=int(original),
      low_freq_factor=float(p["low_freq_factor"]),
      high_freq_factor=float(p["high_freq_factor"]),
    )
  if kind == "yarn":
    factor = float(p.get("factor") or hf["max_position_embeddings"] / original)
    attention = p.get("attention_factor")
    if attention is None and p.get("mscale") and p.get("mscale_all_dim"):
      attention = yarn_mscale(factor, p["mscale"]) / yarn_mscale(factor, p["mscale_all_dim"])
    return dict(
      type="yarn",
      factor=factor,
      original_max_position=int(original),
      beta_fast=float(p.get("beta_fast") or 32.0),
      beta_slow=float(p.get("beta_slow") or 1.0),
      attention_factor=float(attention or yarn_mscale(factor)),
      truncate=bool(p.get("truncate", True)),
    )
  raise ValueError(
    f"config.json rope_type={kind!r} is not supported; use default, linear, llama3 or yarn"
  )


