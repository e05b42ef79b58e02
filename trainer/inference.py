"""A trained model outside the train loop: loaded from a run's workdir (its latest
committed checkpoint and saved config) or from a local Hugging Face directory
(config.json + safetensors), with the tokenizer that goes with it."""

import json
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


def _check_family(path: str, found: str, family: str):
  if family and found != family:
    raise ValueError(
      f"--checkpoint={path!r} holds a {found} model, not {family}; "
      f"pass --config configs/{found}.py (or leave --config out)"
    )


def _from_workdir(path: str, family: str):
  saved = checkpoint.Checkpointer(path, every=0, keep=1).saved_config()
  config = checkpoint.config_from_saved(saved)
  _check_family(path, config.model.family, family)
  cfg = precision.model_config(config)
  graphdef = state_lib.abstract(cfg)[0]
  abstract = state_lib.abstract_weights(cfg, _one_device_mesh())
  restored, missing = checkpoint.restore_weights(path, abstract)
  if missing:
    raise ValueError(f"{path}'s checkpoint lacks {len(missing)} arrays, e.g. {missing[0]}")
  return config, nnx.merge(graphdef, restored["params"], restored.get("model_state", {}))


def _from_hf(path: str, config):
  """The model of config.json with the safetensors weights; the other sections
  (precision, compute, data, ...) are `config`'s (float32 without one)."""
  from modeling import hf  # noqa: PLC0415
  from modeling.decoder import Decoder  # noqa: PLC0415

  if config is None:
    return hf.load(path)
  imported = hf.model_config_from_hf(json.loads((pathlib.Path(path) / "config.json").read_text()))
  _check_family(path, imported.model.family, config.model.family)
  merged = ml_collections.ConfigDict(config.to_dict())
  merged.model = imported.model
  cfg = precision.model_config(merged)
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  return merged, hf.load_params(model, path)


def load(path: str, config=None) -> tuple[ml_collections.ConfigDict, nnx.Module]:
  """(config, model) of a workdir (its saved config) or of a local Hugging Face
  directory (its config.json's model, the other sections from `config`). The
  checkpoint must be of `config`'s family, if one is given."""
  where = pathlib.Path(path).expanduser()
  family = config.model.family if config is not None else ""
  if checkpoint.committed_steps(where.absolute() / "checkpoints"):
    return _from_workdir(str(where), family)
  if (where / "config.json").is_file():  # (a workdir has one too: checked first)
    return _from_hf(str(where), config)
  raise ValueError(
    f"--checkpoint={path!r} is neither a run's workdir with a committed checkpoint "
    "nor a Hugging Face directory with a config.json"
  )


def shard(model: nnx.Module, mesh) -> nnx.Module:
  """The model with its weights laid out on `mesh` by their logical axes, as the
  train step lays them out (for `generate.generate(..., mesh=mesh)`)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  param_shardings, rest_shardings = state_lib.shardings(model.cfg, mesh)
  params = jax.device_put(nnx.to_pure_dict(params), param_shardings)
  rest = jax.device_put(nnx.to_pure_dict(rest), rest_shardings)
  return nnx.merge(graphdef, params, rest)


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


def target_bytes(tok: documents.Tokenizer, batch) -> int:
  """UTF-8 bytes the weighted targets stand for (EOS: none). With a tokenizer.json
  each row's targets are decoded together, so byte-level pieces of one character
  join up (only a character cut at a row's edge is counted as U+FFFD)."""
  weighted = batch["weights"] > 0
  if tok.spec == "byte":
    return int(np.sum((batch["targets"] < 256) & weighted))
  return sum(len(tok.decode(row[w]).encode()) for row, w in zip(batch["targets"], weighted))


def evaluate(config, model, *, batch_size: int, seq_len: int, max_batches: int, progress=True):
  """Held-out loss of `model` on config.data's eval split, batch-split over every
  local device (the train step's eval step on a data-parallel mesh) -> dict of
  nats_per_token, nats_per_byte, perplexity, tokens, bytes, batches."""
  import tqdm  # noqa: PLC0415

  from parallelism.mesh import make_mesh  # noqa: PLC0415
  from trainer import pipeline, step  # noqa: PLC0415

  config = ml_collections.ConfigDict(config.to_dict())
  config.mesh.update(data=jax.device_count(), fsdp=1, tensor=1, expert=1, context=1, stage=1)
  config.train.update(batch_size=batch_size, seq_len=seq_len, microbatches=1)
  program = step.build(config, make_mesh(config.mesh, jax.devices()))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  shardings = {k: jax.tree.map(lambda s: s.sharding, program.abstract_state[k])
               for k in ("params", "model_state")}  # fmt: skip
  params = jax.device_put(nnx.to_pure_dict(params), shardings["params"])
  rest = jax.device_put(nnx.to_pure_dict(rest), shardings["model_state"])
  batches = pipeline.eval_batches(
    config.data, batch_size=batch_size, seq_len=seq_len, max_batches=max_batches
  )
  if not batches:
    raise ValueError(f"data.path={config.data.path!r} has no eval split to evaluate on")
  tok = documents.data_tokenizer(config.data)
  nats, tokens, nbytes = 0.0, 0.0, 0
  for batch in tqdm.tqdm(batches, disable=not progress, desc="evaluate"):
    loss_sum, weight = program.eval_step(
      params, rest, jax.device_put(batch, program.batch_sharding)
    )
    nats, tokens = nats + float(loss_sum), tokens + float(weight)
    nbytes += target_bytes(tok, batch)
  return {
    "nats_per_token": nats / max(tokens, 1.0),
    "nats_per_byte": nats / max(nbytes, 1),
    "perplexity": float(np.exp(nats / max(tokens, 1.0))),
    "tokens": int(tokens),
    "bytes": nbytes,
    "batches": len(batches),
  }
