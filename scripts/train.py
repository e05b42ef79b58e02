"""Train a model from a config.

  python scripts/train.py --config configs/llama3.py:tiny --workdir runs/demo \
      [--config.train.steps=200 --config.optim.lr=3e-4 ...]

Running it again with the same --workdir resumes from the last checkpoint;
--print_config prints the config (preset + overrides) and exits.
"""

import logging as std_logging
import os
import pathlib
import sys
import threading

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
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config and exit.")


def _quiet_orbax(record) -> bool:
  """Drops orbax's own error logs (tracebacks of a failed background save): the
  trainer reports that fault itself, in one sentence."""
  return not (record.levelno >= std_logging.ERROR and "orbax" in record.pathname)


def _closed_loop(error) -> bool:
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _quiet_closed_loops():
  """After a failed background save, orbax's worker threads may still hand results
  to the event loop the failure closed; their "Event loop is closed" tracebacks
  (a thread's exception, or a future's callback logged by asyncio or
  concurrent.futures) are dropped: the trainer reports the failure itself."""
  keep = lambda record: not (record.exc_info and _closed_loop(record.exc_info[1]))
  for name in ("asyncio", "concurrent.futures"):
    std_logging.getLogger(name).addFilter(keep)
  report = threading.excepthook
  threading.excepthook = lambda args: None if _closed_loop(args.exc_value) else report(args)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO.
  std_logging.getLogger("absl").addFilter(_quiet_orbax)
  _quiet_closed_loops()
  from parallelism.mesh import initialize_distributed
  from trainer import checkpoint
  from trainer.trainer import NonFinite, Trainer

  if _CONFIG.value is not None and _PRINT_CONFIG.value:
    print(cli.config_or_exit(_CONFIG))  # the preset with every --config.* override applied
    return
  if _CONFIG.value is None or _WORKDIR.value is None:
    sys.exit("error: both --config and --workdir are required")
  config = cli.config_or_exit(_CONFIG)
  try:
    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    result = Trainer(config, _WORKDIR.value).run()
  except (ValueError, NonFinite, checkpoint.SaveFailed) as e:
    # One sentence; exit at once (a failed background save may never finish).
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
  if result["eval"]:
    print(
      f"held-out eval loss: {result['eval']['eval_loss']:.4f} nats/token "
      f"at step {result['eval']['step']}"
    )


def run():
  """The console entry point (pyproject.toml [project.scripts])."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
