"""A trained model outside the train loop: loaded from a run's workdir (its latest
committed checkpoint and saved config) or from a local Hugging Face directory
(config.json + safetensors), with the tokenizer that goes with it."""

import pathlib

import jax
import ml_collections
import numpy as np
from flax import nnx

from trainer import checkpoint, documents, precision
from trainer import state as state_lib


def _one_device_mesh():
  from parallelism.rules import MESH_AXES  # noqa: PLC0415

  devices = np.array(jax.devices()[:1]).reshape((1,) * len(MESH_AXES))
  return jax.sharding.Mesh(devices, MESH_AXES)


def _from_workdir(workdir: pathlib.Path):
  saved = checkpoint.Checkpointer(str(workdir), every=0, keep=1).saved_config()
  config = checkpoint.config_from_saved(saved)
  cfg = precision.model_config(config)
  graphdef, params, rest = state_lib.abstract(cfg)
  param_shardings, rest_shardings = state_lib.shardings(cfg, _one_device_mesh())
  struct = lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype)
  abstract = {
    "params": jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, cfg.param_dtype, sharding=sh),
      state_lib.nested(params, struct), param_shardings,
    ),
    "model_state": jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      state_lib.nested(rest, struct), rest_shardings,
    ),
  }  # fmt: skip
  restored, missing = checkpoint.restore_weights(str(workdir), abstract)
  if missing:
    raise ValueError(f"{workdir}'s checkpoint lacks {len(missing)} arrays, e.g. {missing[0]}")
  return config, nnx.merge(graphdef, restored["params"], restored.get("model_state", {}))


def load(path: str, family: str = "") -> tuple[ml_collections.ConfigDict, nnx.Module]:
  """(config, model) of a workdir or a local Hugging Face directory; family, if
  given, must be the checkpoint's."""
  where = pathlib.Path(path).expanduser()
  if checkpoint.committed_steps(where.absolute() / "checkpoints"):
    config, model = _from_workdir(where)
  elif (where / "config.json").is_file():  # (a workdir has one too: checked first)
    from modeling import hf  # noqa: PLC0415

    config, model = hf.load(where)
  else:
    raise ValueError(
      f"--checkpoint={path!r} is neither a run's workdir with a committed checkpoint "
      "nor a Hugging Face directory with a config.json"
    )
  if family and config.model.family != family:
    raise ValueError(
      f"--checkpoint={path!r} holds a {config.model.family} model, not {family}; "
      f"pass --config configs/{config.model.family}.py (or leave --config out)"
    )
  return config, model


def tokenizer(path: str, config) -> documents.Tokenizer | None:
  """The checkpoint's tokenizer: a Hugging Face directory's tokenizer.json, else the
  run's data.tokenizer; None if its vocabulary is not the model's (ids only)."""
  local = pathlib.Path(path).expanduser() / "tokenizer.json"
  spec = str(local) if local.is_file() else config.data.tokenizer
  try:
    tok = documents.tokenizer(spec, config.data.eos_token)
  except ValueError:
    return None
  return tok if tok.vocab_size <= config.model.vocab_size else None
