"""Checkpoints on orbax's CheckpointManager: the train state (step, params,
optimizer state) plus the grain iterator state, committed atomically by orbax
(written to a temporary directory, renamed when complete). Each process saves
its own iterator (grain's handler writes process_I-of-N.json): processes read
different rows of the batch."""

import pathlib

import grain
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, workdir: str, every: int, keep: int):
    self.every = every
    self.manager = ocp.CheckpointManager(
      pathlib.Path(workdir).absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=("state", "data"),
    )

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, data_iter):
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)
      ),
      force=True,
    )

  def latest_step(self):
    return self.manager.latest_step()

  def restore(self, abstract_state, data_iter):
    """The state of the latest committed step (`abstract_state` gives shapes and
    shardings); `data_iter` is moved to where that step left it."""
    step = self.manager.latest_step()
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
