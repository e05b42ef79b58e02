"""jaxfrontier model -> Hugging Face checkpoint directory (config.json + safetensors).

The inverse of `loader.py`, driven by the same tables: `families/` says which
config.json key holds each `config.model` field and how each family lays out
its layers, `tensors.py` names every tensor. `hf_config(model_cfg)` writes the
config.json dict and checks it by reading it back with the loader: a model the
family's HF code cannot express (a window Llama has no key for, a router HF
hard-codes differently) is an error naming the fields, never a silently
different model. `save(model, model_cfg, directory)` writes both files.

Not exported: multi-token-prediction modules (the loader does not read them
either). Training settings live outside `config.model` (objective, compute,
precision), so there is nothing else to leave out.
"""

import json
import math
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx, traverse_util
from safetensors.numpy import save_file

from modeling.config import decoder_config
from modeling.decoder import Decoder
from modeling.hf import config_json, families, loader, tensors
from modeling.hf.families.common import CHUNKED, DENSE, FULL, LINEAR, SLIDING, Layers

# Our family -> the model_type transformers loads it as (Kimi K2's checkpoints are
# DeepSeek-V3 code under their own model_type, which transformers does not register).
MODEL_TYPES = {fam.name: t for t, fam in reversed(families.FAMILIES.items())}
MODEL_TYPES["kimi_k2"] = "deepseek_v3"
SHARD_BYTES = 5 * 2**30  # safetensors file size above which the export is sharded.

# Our projections keep heads as their own axes ([e, heads, head_dim]); HF Linear
# weights are 2-D [out, in]. Input axes lead ours: one, or two for o_proj.
_INPUT_AXES = {"o_proj": 2, "out_proj": 2}  # out_proj: gated DeltaNet [hv, dv, e]


def _untransform(path, transform, a):
  """Our per-layer array -> the HF tensor (AS_IS / TRANSPOSE / CONV)."""
  if transform == tensors.CONV:
    return a.T[:, None, :]
  if transform == tensors.HEADS_4D:
    return a.reshape(1, 1, -1, 1)
  if transform == tensors.TRANSPOSE:
    k = _INPUT_AXES.get(path[-1], 1)
    return a.reshape(math.prod(a.shape[:k]), -1).T
  if path[0] in ("prefix", "stack", "tail") and "experts" not in path:
    return a.reshape(-1)  # a layer's biases, norms and sinks are 1-D in HF
  return a


# Column-split transforms: the HF tensor is the two halves merged back.
_HALVES = {
  tensors.EVEN: (0, "interleave"),
  tensors.ODD: (1, "interleave"),
  tensors.FIRST: (0, "concat"),
  tensors.SECOND: (1, "concat"),
}
# Fields whose 0 HF writes as null (DeepSeek: no q_lora_rank = a plain q_proj).
_NONE_IF_ZERO = ("mla.q_lora_rank",)
_INTS = ("query_pre_attn_scalar",)  # a float field of ours, an int of HF's.
_HF_ACTIVATIONS = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}


# ------------------------------------------------------------------ config


def _resolved(m: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.model with its "0 = derive it" fields filled in, as HF spells them out."""
  m = ml_collections.ConfigDict(m.to_dict())
  if not m.head_dim:
    m.head_dim = m.embed_dim // m.num_heads
  if m.moe.num_shared_experts and not m.moe.shared_mlp_dim:
    m.moe.shared_mlp_dim = m.moe.num_shared_experts * m.moe.expert_mlp_dim
  if m.rope_scaling.type == "yarn" and not m.rope_scaling.attention_factor:
    m.rope_scaling.attention_factor = config_json.yarn_mscale(m.rope_scaling.factor)
  return m


def layers(m) -> Layers:
  """Per-layer attention kind, RoPE use and FFN kind of config.model `m`."""
  kinds = {"global": FULL, "local": SLIDING, "chunked": CHUNKED, "linear": LINEAR}
  n = m.num_layers
  at = lambda pattern, i: pattern[i % len(pattern)]
  return Layers(
    types=[kinds[at(m.attention_pattern, i)] for i in range(n)],
    ropes=[at(m.rope_pattern, i) == "rope" for i in range(n)],
    ffns=[DENSE if i < m.first_dense_layers else at(m.ffn_pattern, i) for i in range(n)],
  )


def _field_entry(m, field, key, model_type):
  """(config.json key, value) of config.model `field` (the inverse of the loader's)."""
  key, translate = key if isinstance(key, tuple) else (key, None)
  node, leaf = config_json.field_node(m, field)
  value = node[leaf]
  if translate is not None:
    matches = [hf for hf, ours in translate.items() if ours == value]
    if not matches:
      raise ValueError(f"model.{field}={value!r} cannot be exported as {model_type}")
    return key, matches[0]
  if field == "activation":
    return key, _HF_ACTIVATIONS[value]
  if field in _NONE_IF_ZERO and not value:
    return key, None
  if field in _INTS:
    return key, int(value)
  return key, value


def _rope_dict(theta, scaling, partial: float, mscale_all_dim: float) -> dict:
  """One layer kind's `rope_parameters` (transformers 5 format)."""
  p = {"rope_theta": theta}
  if scaling.type == "none":
    p["rope_type"] = "default"
  elif scaling.type == "linear":
    p.update(rope_type="linear", factor=scaling.factor)
  elif scaling.type == "llama3":
    p.update(
      rope_type="llama3",
      factor=scaling.factor,
      low_freq_factor=scaling.low_freq_factor,
      high_freq_factor=scaling.high_freq_factor,
      original_max_position_embeddings=scaling.original_max_position,
    )
  else:  # yarn
    p.update(
      rope_type="yarn",
      factor=scaling.factor,
      original_max_position_embeddings=scaling.original_max_position,
      beta_fast=scaling.beta_fast,
      beta_slow=scaling.beta_slow,
      attention_factor=scaling.attention_factor,
      truncate=scaling.truncate,
    )
    if mscale_all_dim:
      p["mscale_all_dim"] = mscale_all_dim  # MLA softmax scale (HF DeepSeek)
  if partial != 1.0:
    p["partial_rotary_factor"] = partial
  return p


def _rope(m, fam, lay) -> dict:
  mscale = m.mla.mscale_all_dim if m.attention == "mla" else 0.0
  glob = _rope_dict(m.rope_theta, m.rope_scaling, m.partial_rotary_factor, mscale)
  scaled = m.rope_scaling.type in ("llama3", "yarn")
  # HF derives YaRN's default attention factor from max_position / original.
  original = m.rope_scaling.original_max_position
  out = {"max_position_embeddings": int(original * m.rope_scaling.factor) if scaled else original}
  local = None
  if SLIDING in lay.types and m.local_rope_theta:
    none = ml_collections.ConfigDict({"type": "none"})
    local = _rope_dict(m.local_rope_theta, none, m.partial_rotary_factor, 0.0)
  if fam.local_theta_key or fam.nested_rope:  # nested per layer type (Gemma 3, Olmo 3)
    out["rope_parameters"] = {FULL: glob, SLIDING: local or dict(glob)}
  elif local is not None:
    raise ValueError(
      f"model.local_rope_theta={m.local_rope_theta} cannot be exported as "
      f"{MODEL_TYPES[m.family]} (one RoPE for every layer); set it to 0"
    )
  else:
    out["rope_parameters"] = glob
  return out


def _differences(ours, theirs, prefix="model.") -> list[str]:
  out = []
  for key, value in ours.items():
    if isinstance(value, dict):
      out += _differences(value, theirs[key], f"{prefix}{key}.")
    elif key != "family" and value != theirs[key]:
      out.append(f"{prefix}{key}={value!r} (reads back as {theirs[key]!r})")
  return out


def hf_config(model_cfg, dtype: str = "float32") -> dict:
  """config.model -> the config.json dict of its family's HF model, checked by
  reading it back: the loader must rebuild the same model function."""
  m = _resolved(model_cfg)
  if m.family not in MODEL_TYPES:
    raise ValueError(
      f"model.family={m.family!r} has no Hugging Face export; supported: "
      f"{', '.join(sorted(MODEL_TYPES))}"
    )
  model_type = MODEL_TYPES[m.family]
  fam, lay = families.FAMILIES[model_type], layers(m)
  hf = {"model_type": model_type, "architectures": [fam.architecture], "dtype": dtype}
  # Token ids belong to the tokenizer, which the model config does not know.
  hf.update(pad_token_id=None, bos_token_id=None, eos_token_id=None)
  hf.update(_field_entry(m, f, k, model_type) for f, k in fam.fields.items())
  hf.update(fam.required)
  hf["sliding_window"] = m.sliding_window if SLIDING in lay.types else None
  hf.update(_rope(m, fam, lay))
  hf.update(fam.layout(m, lay))
  if loader.mtp_mapped(fam):
    hf[tensors.MTP_KEY] = m.mtp.depth
  if m.max_len:  # (else the HF class's default)
    hf["max_position_embeddings"] = m.max_len
  _check_reads_back(m, hf, model_type)
  return hf


def _exported(model_cfg) -> ml_collections.ConfigDict:
  """config.model as an export carries it: MTP modules only where the family stores
  them (DeepSeek, GLM: as extra layers)."""
  m = ml_collections.ConfigDict(model_cfg.to_dict())
  fam = families.FAMILIES.get(MODEL_TYPES.get(m.family, ""))
  if fam is None or not loader.mtp_mapped(fam):
    m.mtp.depth = 0
  return m


def check_matches(model_cfg, directory):
  """`checkpoint.init_from` a Hugging Face directory: config.model must compute the
  function its config.json describes; one clause per field that changes it."""
  directory = pathlib.Path(directory)
  hf = json.loads((directory / "config.json").read_text())
  theirs = config_json.model_config_from_hf(hf).model
  ours = _exported(model_cfg)
  ours.max_len = theirs.max_len  # (generation's limit; not the function)
  if decoder_config(ours) == decoder_config(theirs):
    return
  mine, other = (
    traverse_util.flatten_dict(ours.to_dict()),
    traverse_util.flatten_dict(theirs.to_dict()),
  )
  diffs = [
    f"model.{'.'.join(key)}={value!r} but its config.json gives {other[key]!r}"
    for key, value in mine.items()
    if key != ("family",) and value != other[key] and _matters(ours, key, other[key])
  ]
  raise ValueError(
    f"checkpoint.init_from={str(directory)!r} holds another model: "
    + "; ".join(diffs or ["(derived settings differ)"])
    + "; start from a preset of its family with those fields, or export it again"
  )


def _matters(ours, key: tuple, value) -> bool:
  """Whether setting field `key` of `ours` to `value` changes the blocks it expands
  to (head_dim 0 and an explicit equal head_dim do not)."""
  changed = ml_collections.ConfigDict(ours.to_dict())
  node, leaf = config_json.field_node(changed, ".".join(key))
  node[leaf] = tuple(value) if isinstance(node[leaf], tuple) else value
  try:
    return decoder_config(changed) != decoder_config(ours)
  except ValueError:  # the field alone makes an invalid model: it matters
    return True


def _check_reads_back(model_cfg, hf, model_type):
  """The loader must rebuild the same model from the config.json: `config.model`
  holds only what the function depends on, so the two expand to equal blocks."""
  back = config_json.model_config_from_hf(hf).model
  if decoder_config(_exported(model_cfg)) == decoder_config(back):
    return
  diffs = _differences(model_cfg.to_dict(), back.to_dict()) or ["(derived settings)"]
  raise ValueError(
    f"this model cannot be exported as {model_type}: its config.json cannot express "
    + "; ".join(diffs)
  )


# ----------------------------------------------------------------- weights


def _flat_checkpoint_state(model: Decoder, fam):
  flat = [(p, v) for p, v in nnx.to_flat_state(nnx.state(model))]
  return [
    (p, v) for p, v in loader._mapped(flat, fam) if isinstance(v, loader._CHECKPOINT_VARIABLES)
  ]


_EMBED, _HEAD = tensors.TOP_WEIGHTS["embed"][0], tensors.TOP_WEIGHTS["lm_head"][0]


def hf_tensors(model: Decoder, model_type: str):
  """Yields (HF name, numpy array) for every tensor of `model`'s checkpoint; a
  DeepSeek-line MTP layer also gets copies of the embedding and the head, as the
  official checkpoints store it."""
  fam, kept = families.FAMILIES[model_type], {}
  for name, array in _tensors(model, fam):
    if name in (_EMBED, _HEAD):
      kept[name] = array
    yield name, array
  for k in range(model.cfg.mtp_depth if loader.mtp_mapped(fam) else 0):
    layer = f"model.layers.{model.cfg.num_layers + k}."
    embed = kept[_EMBED]
    yield layer + "embed_tokens.weight", embed
    yield layer + "shared_head.head.weight", kept.get(_HEAD, embed)


def _tensors(model: Decoder, fam):
  halves = {}  # HF name -> {0: array, 1: array} until both halves are in.
  for path, variable in _flat_checkpoint_state(model, fam):
    value = np.asarray(jax.device_get(variable.get_value()))
    shape = loader._layer_shape(path, variable)
    names, transform, per_expert = loader._hf_names(path, shape, model, fam, "")
    per_layer = list(value) if path[0] == "stack" else [value]
    for layer_names, array in zip(names, per_layer, strict=True):
      arrays = list(array) if per_expert else [array]
      for name, a in zip(layer_names, arrays, strict=True):
        if transform not in _HALVES:
          yield name, _untransform(path, transform, a)
          continue
        half, how = _HALVES[transform]
        halves.setdefault(name, {})[half] = a
        if len(halves[name]) == 2:
          pair = halves.pop(name)
          yield name, _merge(pair[0], pair[1], how)
  if halves:
    raise AssertionError(f"unpaired halves: {sorted(halves)}")


def _merge(first, second, how):
  if how == "concat":
    return np.concatenate([first, second], axis=-1)
  out = np.empty(first.shape[:-1] + (2 * first.shape[-1],), first.dtype)
  out[..., 0::2], out[..., 1::2] = first, second
  return out


def _write_shards(named, directory: pathlib.Path, dtype, shard_bytes: int):
  """Streams (name, array) into safetensors files of at most ~shard_bytes each."""
  files, shard, size = [], {}, 0

  def flush():
    files.append((f"part-{len(files)}.safetensors", list(shard)))
    save_file(shard, directory / files[-1][0], metadata={"format": "pt"})

  for name, array in named:
    array = np.ascontiguousarray(array, dtype)  # safetensors writes the raw buffer
    if shard and size + array.nbytes > shard_bytes:
      flush()
      shard, size = {}, 0
    shard[name], size = array, size + array.nbytes
  flush()
  if len(files) == 1:
    (directory / files[0][0]).rename(directory / "model.safetensors")
    return
  weight_map = {}
  for i, (file, names) in enumerate(files):
    final = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
    (directory / file).rename(directory / final)
    weight_map.update(dict.fromkeys(names, final))
  total = sum((directory / f).stat().st_size for f in set(weight_map.values()))
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def save(model: Decoder, model_cfg, directory, dtype: str = "float32", shard_bytes=SHARD_BYTES):
  """Writes `model` (config.model `model_cfg`) to `directory`, which must not exist
  or be empty, as a HF checkpoint: config.json and model.safetensors (or
  size-capped shards plus an index). The files appear together: they are written
  into `<directory>.partial` and renamed when complete."""
  hf = hf_config(model_cfg, dtype)
  directory = pathlib.Path(directory)
  if directory.exists() and any(directory.iterdir()):
    raise ValueError(f"{directory} is not empty; export into a new directory")
  partial = directory.with_name(directory.name + ".partial")
  shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted export
  partial.mkdir(parents=True)
  np_dtype = jnp.dtype(dtype)  # numpy has no bfloat16; jax's (ml_dtypes) does.
  _write_shards(hf_tensors(model, hf["model_type"]), partial, np_dtype, shard_bytes)
  (partial / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
  mode = 0o666 & ~_umask()  # as any other output: safetensors writes its files 0600
  for f in partial.iterdir():
    f.chmod(mode)
  if directory.exists():
    directory.rmdir()
  partial.rename(directory)
  return hf
