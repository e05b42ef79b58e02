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
"""

import pathlib

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


class Checkpointer:
  def __init__(self, workdir: str, every: int, keep: int, keep_every: int = 0):
    self.every = every
    self.manager = ocp.CheckpointManager(
      pathlib.Path(workdir).absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        keep_period=keep_every or None,
        create=True,
        enable_async_checkpointing=True,
        cleanup_tmp_directories=True,
      ),
      item_names=("state", "data", "config"),
    )

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, data_iter, config: dict):
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(config),
      ),
      force=True,
    )

  def latest_step(self):
    return self.manager.latest_step()

  def saved_config(self) -> dict:
    """The config the latest committed checkpoint was written with."""
    step = self.manager.latest_step()
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored.config

  def restore(self, abstract_state, data_iter):
    """The state of the latest committed step (`abstract_state` gives shapes and
    shardings); `data_iter` is moved to where that step left it. A checkpoint whose
    arrays are laid out otherwise is one sentence, before orbax reads anything."""
    step = self.manager.latest_step()
    saved = saved_arrays(self.manager.directory, step)
    check_layout(list(saved), list(_flat_names(abstract_state)), step, self.manager.directory)
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter),
      ),
    )
    return restored.state

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


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
  example = f"'{only_saved[0]}' saved" if only_saved else "nothing saved"
  example += f", '{only_wanted[0]}' wanted" if only_wanted else ""
  raise ValueError(
    f"the checkpoint at step {step} in {directory} predates this version's parameter layout "
    f"({len(only_saved)} saved arrays and {len(only_wanted)} wanted ones differ: {example}); "
    "resume it with the version that wrote it, or start a new --workdir "
    "(checkpoint.init_from=<that workdir> keeps every array whose path is unchanged)"
  )


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
