"""Train a model from a config.

  python scripts/train.py --config configs/llama3.py:tiny --workdir runs/demo \
      [--config.train.steps=200 --config.optim.lr=3e-4 ...]

Running it again with the same --workdir resumes from the last checkpoint.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from trainer import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "configs/FAMILY.py:PRESET", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, config and checkpoints.")
_COORDINATOR = flags.DEFINE_string(
  "coordinator", "", "host:port of process 0 for multi-process runs (default: auto-detect)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", 0, "Processes in the run (with --coordinator)."
)
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO.
  from parallelism.mesh import initialize_distributed
  from trainer.trainer import Trainer

  if _CONFIG.value is None or _WORKDIR.value is None:
    sys.exit("error: both --config and --workdir are required")
  config = cli.config_or_exit(_CONFIG)
  try:
    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  try:
    trainer = Trainer(config, _WORKDIR.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  result = trainer.run()
  if result["eval"]:
    print(
      f"held-out eval loss: {result['eval']['eval_loss']:.4f} nats/token "
      f"at step {result['eval']['step']}"
    )


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
