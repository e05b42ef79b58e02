"""Ablation sweep: one train.py run per cell of a grid (or list) of config overrides.

  python scripts/sweep.py --config configs/llama3.py:tiny --workdir runs/sweep \
      --sweep optim.lr=1e-3,3e-3 --sweep model.num_layers=2,4 [--config.train.steps=100 ...]

Each --sweep KEY=V1,V2,... is one grid axis (the first varies slowest); --list FILE
gives the cells instead, one per line: `[NAME:] KEY=VALUE ...`. Other --config.*
flags go to every cell. Cell <name> trains in <workdir>/<name> (log: train.log);
running the same command again skips finished cells and resumes the others. At
the end: <workdir>/summary.csv, summary.md and loss_curves.png; --evaluate adds each
finished cell's held-out nats_per_token, nats_per_byte and perplexity (its latest
checkpoint on --eval_batches batches of its data's eval split, in this process).
--dry-run prints the commands, --emit FILE writes them one per line (a cluster
array job's tasks).
"""

import pathlib
import shlex
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402

from trainer import cli, sweep  # noqa: E402

_TRAIN = pathlib.Path(__file__).resolve().with_name("train.py")

_CONFIG = flags.DEFINE_string("config", None, "configs/FAMILY.py:PRESET")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: one workdir per cell, summary.")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "KEY=V1,V2,...: one grid axis (repeatable).")
_LIST = flags.DEFINE_string("list", None, "File of cells, one per line: [NAME:] KEY=VALUE ...")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Cells trained at once.", lower_bound=1)
_DRY_RUN = flags.DEFINE_bool("dry-run", False, "Print each cell's command; run nothing.")
_EMIT = flags.DEFINE_string("emit", None, "Write each cell's command to this file; run nothing.")
_EVALUATE = flags.DEFINE_bool("evaluate", False, "Add each finished cell's held-out loss.")
_EVAL_BATCHES = flags.DEFINE_integer(
  "eval_batches", 8, "Held-out batches per cell with --evaluate.", lower_bound=1
)


def parse_flags(argv):
  """absl flags; the --config.KEY=VALUE overrides shared by every cell come back as args."""
  common = [arg for arg in argv[1:] if arg.startswith("--config.")]
  rest = cli.parse_flags([arg for arg in argv if not arg.startswith("--config.")])
  return [*rest, *common]


def main(argv):
  logging.set_verbosity(logging.WARNING)  # matplotlib logs its font cache at INFO.
  common = argv[1:]
  if _CONFIG.value is None or _WORKDIR.value is None:
    sys.exit("error: both --config and --workdir are required")
  if bool(_SWEEP.value) == bool(_LIST.value):
    sys.exit("error: give either --sweep KEY=V1,V2,... (a grid) or --list FILE")
  for arg in common:
    if "=" not in arg:
      sys.exit(f"error: {arg!r}: write overrides as --config.KEY=VALUE")
  try:
    cells = sweep.grid(_SWEEP.value) if _SWEEP.value else sweep.read_list(_LIST.value)
    jobs = sweep.plan(cells, _CONFIG.value, _WORKDIR.value, common, _TRAIN)
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  commands = [shlex.join(job.command) for job in jobs]
  if _DRY_RUN.value:
    print("\n".join(commands))
    return
  if _EMIT.value:
    pathlib.Path(_EMIT.value).write_text("".join(c + "\n" for c in commands))
    print(f"wrote {len(commands)} commands to {_EMIT.value}")
    return
  failed = sweep.run(jobs, _PARALLEL.value)
  evaluations = sweep.evaluate_cells(jobs, failed, _EVAL_BATCHES.value) if _EVALUATE.value else None
  print(sweep.write_summary(_WORKDIR.value, jobs, failed, evaluations))
  if failed:
    names = ", ".join(job.cell.name for job in jobs if job.cell.name in failed)
    sys.exit(f"error: {len(failed)} of {len(jobs)} cells failed: {names}")


def run():
  """The console entry point (pyproject.toml [project.scripts])."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
