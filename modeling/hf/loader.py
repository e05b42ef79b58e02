"""Hugging Face checkpoints -> jaxfrontier config and params.

`model_config_from_hf(config.json dict)` gives a full, locked config;
`load_params(model, directory)` copies `*.safetensors` into a `Decoder`;
`load(directory)` does both. Per-family knowledge lives in `families.py`.
"""

import contextlib
import json
import math
import pathlib

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from safetensors import safe_open

from configs import base
from modeling.config import decoder_config
from modeling.decoder import Decoder
from modeling.hf import families
from modeling.hf.families import FULL, SLIDING

# Tensors a checkpoint may carry that hold nothing we need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ------------------------------------------------------------------ config


def model_config_from_hf(hf_config: dict) -> ml_collections.ConfigDict:
  """config.json (as a dict) -> locked jaxfrontier config with `model` filled in."""
  fam = families.family(hf_config.get("model_type"))
  hf = {**fam.defaults, **hf_config}
  for key, bad in fam.rejected.items():
    if hf.get(key) == bad:
      raise ValueError(f"config.json {key}={bad!r} is not supported for {hf['model_type']}")
  config = base.get_config()
  m = config.model
  m.family = fam.name
  for field, key in fam.fields.items():
    m[field] = _field_value(m, field, hf, key)
  for field, value in fam.model.items():
    m[field] = value
  types = _layer_patterns(m, hf, fam)
  _rope(m, hf, fam, types)
  config.lock()
  return config


def _field_value(m, field, hf, key):
  if key not in hf:
    raise ValueError(f"config.json has no {key!r} (needed for model.{field})")
  value = hf[key]
  if value is None:  # HF's "derive it": kv heads = heads; 0 / off for the rest.
    return m.num_heads if field == "num_kv_heads" else type(m[field])()
  if field == "activation":
    if value not in families.ACTIVATIONS:
      raise ValueError(
        f"config.json {key}={value!r} is not supported; "
        f"use one of {', '.join(families.ACTIVATIONS)}"
      )
    return families.ACTIVATIONS[value]
  return type(m[field])(value)


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
  unknown = sorted(set(types) - {FULL, SLIDING})
  if unknown:
    raise ValueError(f"config.json layer_types {unknown} are not supported; use {FULL}, {SLIDING}")
  if SLIDING in types:
    if not hf.get("sliding_window"):
      raise ValueError("config.json has sliding_attention layers but no sliding_window")
    m.sliding_window = int(hf["sliding_window"])
  m.attention_pattern = _period(["local" if t == SLIDING else "global" for t in types])
  m.rope_pattern = _period(["rope" if r else "nope" for r in ropes])
  return types


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
  for params in (glob, local):
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor")) or 1.0
    if partial != 1.0:
      raise ValueError(
        f"config.json partial_rotary_factor={partial} is not supported "
        f"for {hf['model_type']} (its attention rotates the whole head)"
      )
  m.rope_theta = float(glob["rope_theta"])
  m.rope_scaling.update(_scaling(glob, hf))
  if SLIDING in types and local != glob:
    if _rope_type(local) != "default":
      raise ValueError(
        f"config.json sliding_attention rope_type={_rope_type(local)!r} is not "
        "supported; sliding layers take only a theta (rope_type 'default')"
      )
    m.local_rope_theta = float(local["rope_theta"])


def _yarn_mscale(factor, mscale=1.0):
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
    if p.get("truncate", True) is False:
      raise ValueError("config.json rope_parameters.truncate=False (yarn) is not supported")
    factor = float(p.get("factor") or hf["max_position_embeddings"] / original)
    attention = p.get("attention_factor")
    if attention is None and p.get("mscale") and p.get("mscale_all_dim"):
      attention = _yarn_mscale(factor, p["mscale"]) / _yarn_mscale(factor, p["mscale_all_dim"])
    return dict(
      type="yarn",
      factor=factor,
      original_max_position=int(original),
      beta_fast=float(p.get("beta_fast") or 32.0),
      beta_slow=float(p.get("beta_slow") or 1.0),
      attention_factor=float(attention or _yarn_mscale(factor)),
    )
  raise ValueError(
    f"config.json rope_type={kind!r} is not supported; use default, linear, llama3 or yarn"
  )


# ----------------------------------------------------------------- weights


class _Checkpoint:
  """Tensor name -> numpy array over one or many (indexed) safetensors files."""

  def __init__(self, directory: pathlib.Path, stack: contextlib.ExitStack):
    index = directory / "model.safetensors.index.json"
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
      raise ValueError(f"no *.safetensors files in {directory}")
    self.handles = {f: stack.enter_context(safe_open(directory / f, framework="np")) for f in files}
    self.file_of = {name: f for f, h in self.handles.items() for name in h.keys()}
    self.directory = directory

  def names(self) -> set:
    return set(self.file_of)

  def read(self, name) -> np.ndarray:
    handle = self.handles[self.file_of[name]]
    if handle.get_slice(name).get_dtype() == "BF16":  # numpy has no bfloat16; jax does.
      with safe_open(self.directory / self.file_of[name], framework="flax") as f:
        return np.asarray(f.get_tensor(name))
    return handle.get_tensor(name)


def _hf_names(path: tuple, model: Decoder, fam) -> list:
  """Our flat param path -> [(HF name, transpose)], one per stacked layer."""
  layer_weights = {
    **families.ATTENTION_MLP_WEIGHTS,
    **{k: (v, False) for k, v in fam.norms.items()},
  }
  period = model.cfg.period
  if path[0] == "stack":  # ("stack", "blocks", j, ...): layers p * period + j.
    layers, rest = [p * period + path[2] for p in range(model.num_periods)], path[3:]
  elif path[0] == "tail":  # ("tail", j, ...): layer num_periods * period + j.
    layers, rest = [model.num_periods * period + path[1]], path[2:]
  else:
    return [families.TOP_WEIGHTS[".".join(path)]]
  name, transpose = layer_weights[".".join(rest)]
  return [(f"model.layers.{i}.{name}", transpose) for i in layers]


def _convert(array, transpose, shape, dtype, name):
  array = array.T if transpose else array
  if array.size != math.prod(shape):
    raise ValueError(f"tensor {name} has shape {array.shape}; expected {shape} elements")
  return jnp.asarray(array.reshape(shape), dtype)


def load_params(model: Decoder, directory) -> Decoder:
  """Copies the safetensors weights in `directory` into `model` (in place)."""
  directory = pathlib.Path(directory)
  fam = families.family(json.loads((directory / "config.json").read_text()).get("model_type"))
  flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  wanted = {path: _hf_names(path, model, fam) for path, _ in flat}
  with contextlib.ExitStack() as stack:
    ckpt = _Checkpoint(directory, stack)
    needed = {name for names in wanted.values() for name, _ in names}
    missing = sorted(needed - ckpt.names())
    unexpected = sorted(
      n
      for n in ckpt.names() - needed
      if not n.endswith(_IGNORED_SUFFIXES)
      and not (n == "lm_head.weight" and model.cfg.tie_embeddings)
    )
    if missing or unexpected:
      raise ValueError(
        f"checkpoint {directory} does not match the {fam.name} model: "
        f"missing {missing or 'none'}; unexpected {unexpected or 'none'}"
      )
    new = []
    for path, variable in flat:
      value, names = variable.get_value(), wanted[path]
      stacked = path[0] == "stack"
      shape = value.shape[1:] if stacked else value.shape
      arrays = [_convert(ckpt.read(n), t, shape, value.dtype, n) for n, t in names]
      new.append((path, variable.replace(jnp.stack(arrays) if stacked else arrays[0])))
  nnx.update(model, nnx.from_flat_state(new))
  return model


def load(directory, param_dtype: str = "float32", compute_dtype: str = "float32"):
  """HF checkpoint directory -> (config, Decoder with its weights)."""
  directory = pathlib.Path(directory)
  config = model_config_from_hf(json.loads((directory / "config.json").read_text()))
  with config.unlocked():
    config.precision.param_dtype = param_dtype
    config.precision.compute_dtype = compute_dtype
  cfg = decoder_config(config.model, param_dtype, compute_dtype)
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  return config, load_params(model, directory)
