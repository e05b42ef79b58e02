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


def byte_lengths(tok: documents.Tokenizer, vocab_size: int) -> np.ndarray:
  """UTF-8 bytes each token id stands for (EOS and ids past the tokenizer: 0); with
  a tokenizer.json, each id decoded on its own (byte-level BPE pieces of one
  character count as U+FFFD's 3 bytes: per-byte numbers there are approximate)."""
  if tok.spec == "byte":
    lengths = np.zeros(vocab_size, np.int64)
    lengths[:256] = 1
    return lengths
  return np.array(
    [len(tok.decode([i]).encode()) if i < tok.vocab_size else 0 for i in range(vocab_size)]
  )


def evaluate(config, model, *, batch_size: int, seq_len: int, max_batches: int, progress=True):
  """Held-out loss of `model` on config.data's eval split, batch-split over every
  local device (the train step's eval step on a data-parallel mesh) -> dict of
  nats_per_token, nats_per_byte, perplexity, tokens, bytes, batches."""
  import tqdm  # noqa: PLC0415

  from parallelism.mesh import make_mesh  # noqa: PLC0415
  from trainer import data, step  # noqa: PLC0415

  config = ml_collections.ConfigDict(config.to_dict())
  config.mesh.update(data=jax.device_count(), fsdp=1, tensor=1, expert=1, context=1)
  config.train.update(batch_size=batch_size, seq_len=seq_len, microbatches=1)
  program = step.build(config, make_mesh(config.mesh, jax.devices()))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  shardings = {k: jax.tree.map(lambda s: s.sharding, program.abstract_state[k])
               for k in ("params", "model_state")}  # fmt: skip
  params = jax.device_put(nnx.to_pure_dict(params), shardings["params"])
  rest = jax.device_put(nnx.to_pure_dict(rest), shardings["model_state"])
  batches = data.eval_batches(
    config.data, batch_size=batch_size, seq_len=seq_len, max_batches=max_batches
  )
  if not batches:
    raise ValueError(f"data.path={config.data.path!r} has no eval split to evaluate on")
  lengths = byte_lengths(documents.data_tokenizer(config.data), config.model.vocab_size)
  nats, tokens, nbytes = 0.0, 0.0, 0
  for batch in tqdm.tqdm(batches, disable=not progress, desc="evaluate"):
    loss_sum, weight = program.eval_step(
      params, rest, jax.device_put(batch, program.batch_sharding)
    )
    nats, tokens = nats + float(loss_sum), tokens + float(weight)
    nbytes += int(np.sum(lengths[batch["targets"]] * (batch["weights"] > 0)))
  return {
    "nats_per_token": nats / max(tokens, 1.0),
    "nats_per_byte": nats / max(nbytes, 1),
    "perplexity": float(np.exp(nats / max(tokens, 1.0))),
    "tokens": int(tokens),
    "bytes": nbytes,
    "batches": len(batches),
  }
