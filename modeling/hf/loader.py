"""Hugging Face checkpoints -> jaxfrontier params.

`load_params(model, directory)` copies `*.safetensors` into a `Decoder`;
`load(directory)` also reads the config.json (`config_json.py`). Per-family knowledge lives in `families/`,
tensor names in `tensors.py`.
"""

import contextlib
import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from safetensors import safe_open

from modeling.config import Options, decoder_config
from modeling.decoder import Decoder
from modeling.hf import config_json, families, tensors
from modeling.moe.router import RouterBias

# Tensors a checkpoint may carry that hold nothing we need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ----------------------------------------------------------------- weights


class _Checkpoint:
  """Tensor name -> numpy array over one or many (indexed) safetensors files.
  renames: (old, new) substrings applied to the stored names (`Family.renames`)."""

  def __init__(self, directory: pathlib.Path, stack: contextlib.ExitStack, renames=()):
    index = directory / "model.safetensors.index.json"
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
      raise ValueError(f"no *.safetensors files in {directory}")
    self.handles = {f: stack.enter_context(_open(directory / f)) for f in files}
    self.stored = {}  # our name for a tensor -> (file, its stored name)
    for f, h in self.handles.items():
      for stored in h.keys():
        name = stored
        for old, new in renames:
          name = name.replace(old, new)
        self.stored[name] = (f, stored)
    self.directory = directory

  def names(self) -> set:
    return set(self.stored)

  def read(self, name) -> np.ndarray:
    file, name = self.stored[name]
    handle = self.handles[file]
    try:
      if handle.get_slice(name).get_dtype() == "BF16":  # numpy has no bfloat16; jax does.
        with safe_open(self.directory / file, framework="flax") as f:
          return np.asarray(f.get_tensor(name))
      return handle.get_tensor(name)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
      raise _unreadable(self.directory / file, e) from None


def _unreadable(path, e) -> ValueError:
  reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  return ValueError(f"{path} is not a readable safetensors file ({reason}); it may be "
                    "truncated: copy or export it again")  # fmt: skip


def _open(path):
  """safe_open with one sentence naming the file when it is damaged."""
  try:
    return safe_open(path, framework="np")
  except Exception as e:  # noqa: BLE001
    raise _unreadable(path, e) from None


# Variables a checkpoint holds (params and the MoE selection biases).
_CHECKPOINT_VARIABLES = (nnx.Param, RouterBias)
_TRANSFORMS = {
  tensors.AS_IS: lambda a: a,
  tensors.TRANSPOSE: lambda a: np.swapaxes(a, -1, -2),
  tensors.EVEN: lambda a: a[..., 0::2],
  tensors.ODD: lambda a: a[..., 1::2],
  tensors.FIRST: lambda a: a[..., : a.shape[-1] // 2],
  tensors.SECOND: lambda a: a[..., a.shape[-1] // 2 :],
  tensors.CONV: lambda a: a[:, 0, :].T,
  tensors.HEADS_4D: lambda a: a.reshape(-1),
}


def _layers(path: tuple, model: Decoder) -> tuple[list | None, tuple]:
  """Our flat path -> (HF layer indices, one per stacked copy; path inside the block)."""
  cfg, periods = model.cfg, model.num_periods
  if path[0] == "prefix":  # ("prefix", i, ...): layer i.
    return [path[1]], path[2:]
  if path[0] == "stack":  # ("stack", "blocks", j, ...): layers prefix + p * period + j.
    return [cfg.prefix + p * cfg.period + path[2] for p in range(periods)], path[3:]
  if path[0] == "tail":  # ("tail", j, ...): layer prefix + periods * period + j.
    return [cfg.prefix + periods * cfg.period + path[1]], path[2:]
  if path[0] == "mtp":  # ("mtp", k, "block", ...) or ("mtp", k, "enorm", ...): layer n + k.
    return [cfg.num_layers + path[1]], path[3:] if path[2] == "block" else path[2:]
  return None, path


def mtp_mapped(fam) -> bool:
  """Whether the family stores MTP modules as extra layers (DeepSeek, GLM)."""
  return fam.extra_layers_key == tensors.MTP_KEY


def _mapped(flat, fam) -> list:
  """The checkpoint's (path, variable) pairs of `flat`: MTP modules only when the
  family stores them."""
  return [(p, v) for p, v in flat if p[0] != "mtp" or mtp_mapped(fam)]


def _hf_names(path: tuple, shape: tuple, model: Decoder, fam, prefix) -> tuple[list, str, bool]:
  """Our flat path and per-layer shape -> (HF names per stacked layer, transform,
  whether each layer's names are one tensor per routed expert, to stack)."""
  layers, rest = _layers(path, model)
  if layers is None:  # `{x}`: one tensor per entry of a leading stacked axis
    name, transform = tensors.TOP_WEIGHTS[".".join(path)]
    stacked = "{x}" in name
    names = [prefix + name.format(x=x) for x in range(shape[0])] if stacked else [prefix + name]
    return [names], transform, stacked
  table = {
    **tensors.LAYER_WEIGHTS,
    **fam.weights,
    **{k: (v, tensors.AS_IS) for k, v in fam.norms.items()},
    **(tensors.MTP_WEIGHTS if path[0] == "mtp" else {}),
  }
  name, transform = table[".".join(rest)]
  per_expert = "{x}" in name
  experts = range(shape[0]) if per_expert else [None]  # shape: [E, ...]
  names = [[f"{prefix}model.layers.{i}.{name.format(x=x)}" for x in experts] for i in layers]
  return names, transform, per_expert


def _convert(arrays, transform, per_expert, shape, dtype, name):
  arrays = [_TRANSFORMS[transform](a) for a in arrays]
  array = np.stack(arrays) if per_expert else arrays[0]
  if array.size != math.prod(shape):
    raise ValueError(f"tensor {name} has shape {array.shape}; expected {shape} elements")
  return jnp.asarray(array.reshape(shape), dtype)


def _ignored(name: str, model: Decoder, fam, extra_layers: int, prefix: str) -> bool:
  """Tensors a checkpoint may hold that we do not load: rotary buffers, a tied head,
  the `extra_layers` layers after the last one, the family's ignored prefixes
  (multi-token-prediction modules) and suffixes (buffers we derive), and anything
  outside the text model's `prefix` (a vision tower)."""
  if not name.startswith(prefix):
    return True
  name = name[len(prefix) :]
  if name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and model.cfg.tie_embeddings):
    return True
  if fam.ignored_prefixes and name.startswith(fam.ignored_prefixes):
    return True
  if fam.ignored_suffixes and name.endswith(fam.ignored_suffixes):
    return True
  parts, n = name.split("."), model.cfg.num_layers
  return (
    parts[:2] == ["model", "layers"]
    and parts[2].isdigit()
    and n <= int(parts[2]) < n + extra_layers
  )


def _present(ckpt, wanted: dict) -> dict:
  """`wanted` without the MTP modules the checkpoint does not hold (transformers
  saves none: they keep their init); a module held only in part stays, so the
  missing tensors are named."""
  stored, held = ckpt.names(), {}
  for path, (names, *_) in wanted.items():
    if path[0] == "mtp":
      held.setdefault(path[:2], []).append(any(n in stored for layer in names for n in layer))
  return {p: w for p, w in wanted.items() if p[0] != "mtp" or any(held[p[:2]])}


def _check_names(ckpt, wanted: dict, model: Decoder, fam, hf_config, prefix, directory):
  needed = {n for names, _, _ in wanted.values() for layer in names for n in layer}
  extra = (hf_config.get(fam.extra_layers_key) or 0) if fam.extra_layers_key else 0
  missing = sorted(needed - ckpt.names())
  unexpected = sorted(
    n for n in ckpt.names() - needed if not _ignored(n, model, fam, extra, prefix)
  )
  if missing or unexpected:
    raise ValueError(
      f"checkpoint {directory} does not match the {fam.name} model: "
      f"missing {missing or 'none'}; unexpected {unexpected or 'none'}"
    )


def _layer_shape(path, variable) -> tuple:
  shape = variable.get_value().shape
  return shape[1:] if path[0] == "stack" else shape


def _value(ckpt, source, variable, path):
  value = variable.get_value()
  if source is None:  # not in the checkpoint
    return jnp.zeros(value.shape, value.dtype)
  names, transform, per_expert = source
  shape = _layer_shape(path, variable)
  layers = [
    _convert([ckpt.read(n) for n in layer], transform, per_expert, shape, value.dtype, layer[0])
    for layer in names
  ]
  return jnp.stack(layers) if path[0] == "stack" else layers[0]


def load_params(model: Decoder, directory) -> Decoder:
  """Copies the safetensors weights in `directory` into `model` (in place)."""
  directory = pathlib.Path(directory)
  hf_config, prefix = config_json.text_model(json.loads((directory / "config.json").read_text()))
  fam = families.family(hf_config.get("model_type"))
  flat = list(nnx.to_flat_state(nnx.state(model)))
  wanted = {
    path: _hf_names(path, _layer_shape(path, v), model, fam, prefix)
    for path, v in _mapped(flat, fam)
    if isinstance(v, _CHECKPOINT_VARIABLES)
  }
  with contextlib.ExitStack() as stack:
    ckpt = _Checkpoint(directory, stack, fam.renames)
    wanted = _present(ckpt, wanted)
    _check_names(ckpt, wanted, model, fam, hf_config, prefix, directory)
    new = [(p, v.replace(_value(ckpt, wanted.get(p), v, p))) for p, v in flat]
  nnx.update(model, nnx.from_flat_state(new))
  return model


def load_sharded(directory, model: Decoder, targets: dict) -> tuple[dict, list[str]]:
  """The safetensors weights of `directory` for `model` (abstract is enough) as
  {"params", "model_state"} nested dicts of jax.Arrays laid out as `targets` says
  (the train state's ShapeDtypeStructs with shardings), and the paths the
  checkpoint does not hold (MTP modules it lacks keep their init). Each device's
  shard is read by itself (jax.make_array_from_callback): a stacked layer or
  expert axis reads only that shard's layers / experts, one tensor at a time,
  so host memory holds about one tensor beyond the shards."""
  directory = pathlib.Path(directory)
  hf_config, prefix = config_json.text_model(json.loads((directory / "config.json").read_text()))
  fam = families.family(hf_config.get("model_type"))
  flat = [
    (p, v) for p, v in nnx.to_flat_state(nnx.state(model)) if isinstance(v, _CHECKPOINT_VARIABLES)
  ]
  mapped = _mapped(flat, fam)
  wanted = {path: _hf_names(path, _layer_shape(path, v), model, fam, prefix) for path, v in mapped}
  loaded = {}
  with contextlib.ExitStack() as stack:
    ckpt = _Checkpoint(directory, stack, fam.renames)
    wanted = _present(ckpt, wanted)
    _check_names(ckpt, wanted, model, fam, hf_config, prefix, directory)
    skipped = [p for p, _ in flat if p not in wanted]  # MTP modules it does not hold
    for path, v in [(p, v) for p, v in flat if p in wanted]:
      section = "params" if isinstance(v, nnx.Param) else "model_state"
      target = functools.reduce(lambda node, key: node[key], path, targets[section])
      read = functools.partial(_shard, ckpt, wanted[path], path[0] == "stack", target)
      loaded[(section, *path)] = jax.make_array_from_callback(target.shape, target.sharding, read)
  return traverse_util.unflatten_dict(loaded), ["/".join(map(str, p)) for p in skipped]


def _shard(ckpt, source, stacked: bool, target, index) -> np.ndarray:
  """The block `index` (slices of target.shape) of one param, read layer by layer
  (and expert by expert), each HF tensor converted alone."""
  names, transform, per_expert = source
  layers, inner = (names[index[0]], index[1:]) if stacked else (names, index)
  shape = target.shape[1:] if stacked else target.shape
  blocks = []
  for layer in layers:
    if per_expert:  # one tensor per routed expert: read only this block's experts
      arrays = [_TRANSFORMS[transform](ckpt.read(n)) for n in layer[inner[0]]]
      block = np.stack(arrays).reshape((len(arrays), *shape[1:]))[(slice(None), *inner[1:])]
    else:
      array = _TRANSFORMS[transform](ckpt.read(layer[0]))
      if array.size != math.prod(shape):
        raise ValueError(f"tensor {layer[0]} has shape {array.shape}; expected {shape} elements")
      block = array.reshape(shape)[inner]
    blocks.append(np.asarray(block).astype(target.dtype))
  return np.stack(blocks) if stacked else blocks[0]


def _holds_mtp(directory: pathlib.Path, num_layers: int) -> bool:
  """Whether the checkpoint stores tensors of a layer after the last (MTP modules)."""
  with contextlib.ExitStack() as stack:
    names = _Checkpoint(directory, stack).names()
  return any(f"model.layers.{num_layers}." in n for n in names)


def load(directory, param_dtype: str = "float32", compute_dtype: str = "float32"):
  """HF checkpoint directory -> (config, Decoder with its weights)."""
  directory = pathlib.Path(directory)
  config = config_json.model_config_from_hf(json.loads((directory / "config.json").read_text()))
  with config.unlocked():
    config.precision.param_dtype = param_dtype
    config.precision.compute_dtype = compute_dtype
    if config.model.mtp.depth and not _holds_mtp(directory, config.model.num_layers):
      config.model.mtp.depth = 0  # saved by transformers: no MTP modules to load
  cfg = decoder_config(config.model, Options(param_dtype=param_dtype, compute_dtype=compute_dtype))
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  return config, load_params(model, directory)
