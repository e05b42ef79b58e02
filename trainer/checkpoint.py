"""Checkpoints on orbax's CheckpointManager.

A checkpoint holds the train state (step, params, optimizer state, model state
such as the aux-loss-free router biases), each process's grain iterator state
(grain's handler writes process_I-of-N.json: processes read different rows of
the batch) and the resolved config as JSON.

Saves are asynchronous: `save` returns once the arrays are copied off the
devices, and orbax writes them in the background into a temporary directory
that is renamed to the step number only when complete (the atomic commit).
A run killed mid-save leaves only the temporary directory, which restore
never reads and the next start deletes. Kept: the `keep` most recent steps
plus every step that is a multiple of `keep_every`. Restore takes the target
shardings from the abstract state, so a checkpoint restores onto any mesh.

Faults: a save that fails (disk full, permission, I/O; synchronous or in the
background) raises `SaveFailed`, one sentence naming the directory and the last
committed step, at the next step's `check`; a save or wait that makes no
progress for `checkpoint.save_timeout_s` (orbax can block for good behind a
failed background write) ends the process with that sentence. A newest step that cannot be read
is renamed aside (`<step>.unreadable`) and the previous committed step restored
with a message (`checkpoint.fallback`); never more than one step is skipped.
"""

import contextlib
import json
import os
import pathlib
import sys
import tempfile
import threading

import grain
import ml_collections
import orbax.checkpoint as ocp
from flax import traverse_util

from configs import base, moved


def config_from_saved(saved: dict) -> ml_collections.ConfigDict:
  """The locked run config from a checkpoint's JSON (lists back to tuples where
  the field is one); a config saved in an older layout is read in this one."""
  config = base.get_config()
  for path, value in traverse_util.flatten_dict(moved.migrate(saved)).items():
    node = config
    for name in path[:-1]:
      node = node[name]
    if isinstance(node[path[-1]], tuple):
      value = tuple(value)
    node[path[-1]] = value
  config.lock()
  return config


class SaveFailed(OSError):
  """A checkpoint could not be written; the message is the one line to show."""


class RestoreFailed(ValueError):
  """A committed checkpoint could not be read; the message is the one line to show."""


def committed_steps(directory) -> list[int]:
  """The committed steps in a checkpoints directory, newest first (from the file
  system alone: safe from any thread, and blind to saves still in flight)."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)


def cause(e: BaseException) -> str:
  """The innermost exception of a chain, as "Type: first line"."""
  while e.__cause__ or e.__context__:
    e = e.__cause__ or e.__context__
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class Checkpointer:
  def __init__(self, workdir: str, every: int, keep: int, keep_every: int = 0,
               timeout_s: float = 600.0):  # fmt: skip
    self.every, self.timeout_s = every, timeout_s
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self.manager = ocp.CheckpointManager(
      pathlib.Path(workdir).absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        keep_period=keep_every or None,
        create=True,
        enable_async_checkpointing=True,
        cleanup_tmp_directories=True,
        # Directories made in the caller: a failure raises here, where a failed
        # background creation would leave the next save waiting for good.
        async_options=ocp.options.AsyncOptions(
          timeout_secs=int(timeout_s), create_directories_asynchronously=False
        ),
      ),
      item_names=("state", "data", "config"),
    )

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, data_iter, config: dict):
    self.check()
    self._probe(step)
    try:
      with self._deadline(step):
        self.manager.save(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(config),
          ),
          force=True,
        )
    except Exception as e:  # noqa: BLE001 - any failure to write is the same fault.
      raise self._failed(step, e) from e

  def _probe(self, step: int):
    """SaveFailed now if the directory is gone or unwritable: orbax would hang on it
    (a failed background directory creation blocks the next save for good)."""
    try:
      with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".write-check-") as f:
        f.write(b"0")
        f.flush()
    except OSError as e:
      raise self._failed(step, e) from None

  @contextlib.contextmanager
  def _deadline(self, step):
    """Exits the process with the SaveFailed sentence if the block takes longer than
    checkpoint.save_timeout_s (an orbax save or wait stuck on a failed write)."""

    def give_up():
      reason = TimeoutError(f"no progress for checkpoint.save_timeout_s={self.timeout_s:g} s")
      sys.stderr.write(f"error: {self._failed(step, reason)}\n")
      sys.stderr.flush()
      os._exit(1)

    timer = threading.Timer(self.timeout_s, give_up)
    timer.daemon = True
    timer.start()
    try:
      yield
    finally:
      timer.cancel()

  def check(self):
    """Raises SaveFailed if a background save has failed (cheap; no waiting)."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._failed(None, e) from e

  def _failed(self, step, e) -> SaveFailed:
    which = "a checkpoint" if step is None else f"the checkpoint of step {step}"
    return SaveFailed(
      f"writing {which} to {self.directory} failed ({cause(e)}); the last committed "
      f"step is {self.describe_committed()}; fix the disk or directory and run the same "
      "command to resume"
    )

  def describe_committed(self) -> str:
    steps = committed_steps(self.directory)
    return f"step {steps[0]}" if steps else "none (no step was committed)"

  def latest_step(self):
    return self.manager.latest_step()

  def wait(self):
    """Waits for saves in flight; SaveFailed if one failed."""
    try:
      with self._deadline(None):
        self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._failed(None, e) from e

  def saved_config(self) -> dict:
    """The config the latest committed checkpoint was written with."""
    for step in committed_steps(self.directory)[:2]:  # restore() may fall back one step
      try:
        args = ocp.args.Composite(config=ocp.args.JsonRestore())
        return self.manager.restore(step, args=args).config
      except Exception:  # noqa: BLE001 - an unreadable step: restore() will say so
        continue
    return {}

  def restore(self, abstract_state, data_iter, fallback: bool = True, say=print):
    """The state of the latest committed step (`abstract_state` gives shapes and
    shardings); `data_iter` is moved to where that step left it. A checkpoint whose
    arrays are laid out otherwise is one sentence, before orbax reads anything.
    If the newest step cannot be read and `fallback`, it is renamed aside and the
    one before it restored (said in one line); otherwise RestoreFailed."""
    steps = committed_steps(self.directory)
    try:
      return self._restore(steps[0], abstract_state, data_iter)
    except RestoreFailed as e:
      if not fallback or len(steps) < 2:
        hint = " (checkpoint.fallback=True would use the step before it)" if fallback else ""
        raise RestoreFailed(f"{e}{hint if len(steps) > 1 else ''}") from None
      newest, aside = self.directory / str(steps[0]), self.directory / f"{steps[0]}.unreadable"
      os.replace(newest, aside)
      self.manager.reload()
      try:
        state = self._restore(steps[1], abstract_state, data_iter)
      except RestoreFailed as before:  # both fail: the config, not the disk, is likely at fault
        os.replace(aside, newest)
        self.manager.reload()
        raise RestoreFailed(f"{e}; step {steps[1]} cannot be read either ({before}); do "
                            "this run's data and optimizer settings match the checkpoint's?"
                            ) from None  # fmt: skip
      say(f"{e}; moved it to {aside.name} and resumed from step {steps[1]}")
      return state

  def _restore(self, step: int, abstract_state, data_iter):
    check_data_state(self.directory / str(step))
    try:
      saved = saved_arrays(self.directory, step)
    except Exception as e:  # noqa: BLE001 - orbax raises anything on a damaged step.
      raise RestoreFailed(f"checkpoint step {step} in {self.directory} is unreadable "
                          f"({cause(e)})") from e  # fmt: skip
    check_layout(list(saved), list(_flat_names(abstract_state)), step, self.directory)
    try:
      restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.checkpoint.CheckpointRestore(data_iter),
        ),
      )
    except Exception as e:  # noqa: BLE001
      raise RestoreFailed(f"checkpoint step {step} in {self.directory} is unreadable "
                          f"({cause(e)})") from e  # fmt: skip
    return restored.state

  def close(self):
    self.wait()
    self.manager.close()


def check_data_state(step_dir: pathlib.Path):
  """RestoreFailed naming the file if a step's data-iterator state is not JSON."""
  for path in sorted((step_dir / "data").glob("process_*.json")):
    try:
      json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise RestoreFailed(
        f"the data-iterator state {path} of checkpoint step {step_dir.name} is corrupt "
        f"({cause(e)})"
      ) from None


def _name(path) -> str:
  return "/".join(str(k) for k in path)


def _flat_names(tree) -> dict:
  """{"params/stack/blocks/0/attn/q_proj": leaf, ...} of a nested dict."""
  return {_name(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def saved_arrays(directory, step: int) -> dict:
  """{"/"-joined path: array metadata} of a committed step's `state` item."""
  handlers = {  # all three items registered, though only `state` is read
    "state": ocp.PyTreeCheckpointHandler(),
    "data": grain.checkpoint.CheckpointHandler(),
    "config": ocp.JsonCheckpointHandler(),
  }
  manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(), item_handlers=handlers)
  try:
    return _flat_names(manager.item_metadata(step)["state"].tree)
  finally:
    manager.close()


def check_layout(saved: list, wanted: list, step: int, directory):
  """One sentence when a checkpoint's arrays are not the ones this version's state
  has (a checkpoint from before a change of the parameter layout)."""
  params_first = lambda name: (not name.startswith("params/"), name)
  only_saved = sorted(set(saved) - set(wanted), key=params_first)
  only_wanted = sorted(set(wanted) - set(saved), key=params_first)
  if not only_saved and not only_wanted:
    return
  scanned = lambda names: any(n.startswith("params/stack/") for n in names)
  if scanned(saved) != scanned(wanted):
    written = "scan" if scanned(saved) else "unroll"
    raise ValueError(
      f"the checkpoint at step {step} in {directory} was written with compute.scan_layers="
      f"{written} (the layer params {'stacked' if written == 'scan' else 'one per layer'}); "
      f"resume with compute.scan_layers={written} or auto (auto follows the checkpoint)"
    )
  example = f"'{only_saved[0]}' saved" if only_saved else "nothing saved"
  example += f", '{only_wanted[0]}' wanted" if only_wanted else ""
  raise ValueError(
    f"the checkpoint at step {step} in {directory} predates this version's parameter layout "
    f"({len(only_saved)} saved arrays and {len(only_wanted)} wanted ones differ: {example}); "
    "resume it with the version that wrote it, or start a new --workdir "
    "(checkpoint.init_from=<that workdir> keeps every array whose path is unchanged)"
  )


def is_hf_dir(path: str) -> bool:
  """A Hugging Face checkpoint directory (config.json + *.safetensors), not a workdir."""
  where = pathlib.Path(path).expanduser()
  return (
    (where / "config.json").is_file()
    and any(where.glob("*.safetensors"))
    and not committed_steps(where.absolute() / "checkpoints")
  )


def init_weights(path: str, abstract: dict, model_cfg, graphdef) -> tuple[dict, list[str]]:
  """`checkpoint.init_from`'s weights (as `restore_weights` returns them): a run's
  latest checkpoint, or a Hugging Face directory checked against config.model
  and read shard by shard (modeling/hf/loader.py `load_sharded`)."""
  if not is_hf_dir(path):
    return restore_weights(path, abstract)
  from flax import nnx  # noqa: PLC0415

  from modeling.hf import export, loader  # noqa: PLC0415

  export.check_matches(model_cfg, path)
  model = nnx.merge(graphdef, abstract["params"], abstract["model_state"])
  return loader.load_sharded(path, model, abstract)


def restore_weights(workdir: str, abstract: dict) -> tuple[dict, list[str]]:
  """Another run's latest committed `params` and `model_state` (`checkpoint.init_from`).

  abstract: {"params": ..., "model_state": ...} of ShapeDtypeStructs with target
  shardings. Returns (the restored subset of it, the "/"-joined paths it asks for
  that the checkpoint lacks, which the caller keeps as initialised). Optimizer
  state, step and data position are not read.
  """
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  handlers = {  # all three items registered, though only `state` is read
    "state": ocp.PyTreeCheckpointHandler(),
    "data": grain.checkpoint.CheckpointHandler(),
    "config": ocp.JsonCheckpointHandler(),
  }
  manager = ocp.CheckpointManager(directory, item_handlers=handlers)
  try:
    step = manager.latest_step() if directory.is_dir() else None
    if step is None:
      raise ValueError(f"checkpoint.init_from={workdir!r} holds no committed checkpoint")
    name = _name
    saved = saved_arrays(directory, step)
    wanted = traverse_util.flatten_dict(abstract)  # paths may hold int keys (layer lists)
    missing = sorted(name(k) for k in wanted if name(k) not in saved)
    wrong = [
      f"{name(k)}: {tuple(saved[name(k)].shape)} saved, {tuple(v.shape)} here"
      for k, v in wanted.items()
      if name(k) in saved and tuple(saved[name(k)].shape) != tuple(v.shape)
    ]
    if wrong:
      raise ValueError(
        f"checkpoint.init_from={workdir!r} does not fit this model: " + "; ".join(wrong)
      )
    subset = traverse_util.unflatten_dict({k: v for k, v in wanted.items() if name(k) in saved})
    restore_args = ocp.checkpoint_utils.construct_restore_args(subset)
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(subset, restore_args=restore_args, partial_restore=True)
      ),
    ).state
  finally:
    manager.close()
  return restored, missing
