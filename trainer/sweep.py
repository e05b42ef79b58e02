"""Ablation sweeps: cells of config overrides, each one train.py run in its own workdir.

A cell is a name and its `--config.KEY=VALUE` overrides; it trains in
<workdir>/<name>, so running the sweep again skips finished cells and resumes the
others from their last checkpoint. No jax here: planning and summarising stay fast
(evaluate_cells imports it when called).
"""

import concurrent.futures
import csv
import dataclasses
import itertools
import json
import pathlib
import re
import shlex
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from trainer import cli

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")  # runs of these become "-" in derived names
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")  # names given in a --list file
EVAL_COLUMNS = ("nats_per_token", "nats_per_byte", "perplexity")  # from inference.evaluate


@dataclasses.dataclass(frozen=True)
class Cell:
  name: str
  overrides: tuple[tuple[str, str], ...]  # (config key, value as train.py gets it)

  @property
  def args(self) -> list[str]:
    return [f"--config.{key}={value}" for key, value in self.overrides]


@dataclasses.dataclass(frozen=True)
class Job:
  cell: Cell
  workdir: pathlib.Path
  command: list[str]
  steps: int  # the cell's train.steps: finished once a committed checkpoint reaches it


def split_top_level(text: str) -> list[str]:
  """`text` split at the commas outside brackets and quotes: "(1,2),3" -> ["(1,2)", "3"]."""
  parts, depth, quote, start = [], 0, None, 0
  for i, char in enumerate(text):
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  return [*parts, text[start:]]


def parse_sweep(spec: str) -> tuple[str, list[str]]:
  """'optim.lr=1e-3,3e-3' -> ('optim.lr', ['1e-3', '3e-3'])."""
  key, eq, values = spec.partition("=")
  values = [v.strip() for v in split_top_level(values)]
  if not eq or not key.strip() or not all(values):
    raise ValueError(f"--sweep {spec!r} must be KEY=V1,V2,... with no empty value")
  return key.strip(), values


def grid(specs: list[str]) -> list[Cell]:
  """The cartesian product of the --sweep axes, the first axis varying slowest."""
  axes = [parse_sweep(spec) for spec in specs]
  keys = [key for key, _ in axes]
  for key in keys:
    if keys.count(key) > 1:
      raise ValueError(f"--sweep {key} is given twice; list all its values in one --sweep")
  short = short_keys(keys)
  combos = itertools.product(*(values for _, values in axes))
  return unique([_named(None, tuple(zip(keys, combo)), short) for combo in combos])


def read_list(path: str) -> list[Cell]:
  """Cells from a file, one per line: `[NAME:] KEY=VALUE ...`, shell-quoted, # comments."""
  parsed = []
  for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
    where = f"--list {path}:{number}"
    try:
      words = shlex.split(line, comments=True)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    if not words:
      continue
    name = None
    if words[0].endswith(":") and "=" not in words[0]:
      name = words.pop(0)[:-1]
      if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: cell name {name!r} must be letters, digits and ._+=-")
    overrides = []
    for word in words:
      key, eq, value = word.partition("=")
      if not eq or not key:
        raise ValueError(f"{where}: {word!r} is not KEY=VALUE")
      if key in dict(overrides):
        raise ValueError(f"{where}: {key} is set twice")
      overrides.append((key, value))
    parsed.append((name, tuple(overrides)))
  if not parsed:
    raise ValueError(f"--list {path} has no cells")
  short = short_keys(list(dict.fromkeys(key for _, o in parsed for key, _ in o)))
  return unique([_named(name, overrides, short) for name, overrides in parsed])


def short_keys(keys: list[str]) -> dict[str, str]:
  """Each key's shortest dotted suffix that no other key ends with: optim.lr -> lr."""
  short = {}
  for key in keys:
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
      suffix = ".".join(parts[-n:])
      if not any(o != key and (o == suffix or o.endswith("." + suffix)) for o in keys):
        break
    short[key] = suffix
  return short


def _named(name, overrides, short) -> Cell:
  """The cell, named `name` or after its overrides: lr=1e-3_num_layers=2."""
  derived = "_".join(
    f"{short[k]}={_UNSAFE.sub('-', v).strip('-') or 'empty'}" for k, v in overrides
  )
  return Cell(name or derived, overrides)


def unique(cells: list[Cell]) -> list[Cell]:
  """`cells`, checked to have distinct names (their workdirs)."""
  seen = {}
  for cell in cells:
    if cell.name in seen:
      raise ValueError(
        f"cells {' '.join(seen[cell.name].args) or '(none)'!r} and {' '.join(cell.args)!r} "
        f"are both named {cell.name!r}; name them in a --list file (NAME: KEY=VALUE ...)"
      )
    seen[cell.name] = cell
  return cells


def resolve(config_arg: str, overrides: list[str]):
  """The config train.py builds from these args; ValueError with one line if it cannot."""
  path = config_arg.partition(":")[0]
  if not pathlib.Path(path).is_file():
    raise ValueError(f"--config file {path!r} does not exist")
  argv = ["sweep", "--config", config_arg, *overrides]
  try:
    message = cli.unknown_override(argv)
    if message is None:
      values = flags.FlagValues()
      config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
      )
      values(argv)
      return values.config
  except Exception as e:  # noqa: BLE001 - config files raise anything while loading.
    message = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
  raise ValueError(message)


def plan(cells, config_arg: str, workdir: str, common: list[str], train_script) -> list[Job]:
  """Each cell's train.py job; every cell's config is checked now, before any training."""
  jobs = []
  for cell in cells:
    args = [*common, *cell.args]  # the cell's own values come last, so they win
    steps = resolve(config_arg, args).train.steps
    celldir = pathlib.Path(workdir) / cell.name
    command = [sys.executable, str(train_script), "--config", config_arg]
    jobs.append(Job(cell, celldir, [*command, "--workdir", str(celldir), *args], steps))
  return jobs


def latest_step(workdir) -> int | None:
  """The newest committed checkpoint: orbax writes commit_success.txt into each step directory."""
  done = pathlib.Path(workdir, "checkpoints").glob("*/commit_success.txt")
  return max((int(p.parent.name) for p in done if p.parent.name.isdigit()), default=None)


def finished(job: Job) -> bool:
  step = latest_step(job.workdir)
  return step is not None and step >= job.steps


def run(jobs: list[Job], parallel: int = 1) -> set[str]:
  """Trains the unfinished cells, `parallel` at a time; returns the names of those that failed."""
  todo = []
  for job in jobs:
    if finished(job):
      print(f"skip {job.cell.name} (finished at step {latest_step(job.workdir)})", flush=True)
    else:
      todo.append(job)
  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    codes = list(pool.map(_train, todo))
  return {job.cell.name for job, code in zip(todo, codes, strict=True) if code}


def _train(job: Job) -> int:
  job.workdir.mkdir(parents=True, exist_ok=True)
  log, step = job.workdir / "train.log", latest_step(job.workdir)
  print(f"{'run' if step is None else f'resume from step {step}'}: {job.cell.name}", flush=True)
  with log.open("a") as out:  # appended: a resumed cell keeps its earlier attempts' output
    code = subprocess.run(job.command, stdout=out, stderr=subprocess.STDOUT).returncode
  if code:
    print(f"failed: {job.cell.name} exited with code {code}; log: {log}", flush=True)
  else:
    print(f"done: {job.cell.name}", flush=True)
  return code


def read_metrics(workdir) -> tuple[list[dict], list[dict]]:
  """(train records, eval records) of <workdir>/metrics.jsonl in step order. A step
  logged twice (a run resumed from an earlier checkpoint) keeps its last record."""
  path = pathlib.Path(workdir, "metrics.jsonl")
  train, evals = {}, {}
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a killed run
      continue
    (evals if "eval_loss" in record else train)[record["step"]] = record
  return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def evaluate_cells(jobs: list[Job], failed: set[str], max_batches: int) -> dict[str, dict]:
  """{cell name: inference.evaluate's dict} for each finished cell, from its latest
  checkpoint on its data's eval split in batches of its train batch_size x seq_len.
  A cell that cannot be evaluated is reported and left out."""
  from trainer import inference  # noqa: PLC0415 - jax; a sweep without --evaluate stays light.

  results = {}
  for job in jobs:
    if job.cell.name in failed or not finished(job):
      continue
    try:
      config, model = inference.load(str(job.workdir))
      results[job.cell.name] = inference.evaluate(
        config, model, batch_size=config.train.batch_size, seq_len=config.train.seq_len,
        max_batches=max_batches, progress=False,
      )  # fmt: skip
    except ValueError as e:
      print(f"failed: evaluating {job.cell.name}: {e}", flush=True)
      continue
    print(f"evaluated: {job.cell.name}", flush=True)
  return results


def write_summary(
  workdir, jobs: list[Job], failed: set[str] = frozenset(), evaluations: dict | None = None
) -> str:
  """summary.csv, summary.md and loss_curves.png in `workdir`; returns the Markdown table.
  With `evaluations` (evaluate_cells' dict) the table gains the EVAL_COLUMNS."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  keys = list(dict.fromkeys(key for job in jobs for key, _ in job.cell.overrides))
  held_out = list(EVAL_COLUMNS) if evaluations is not None else []
  columns = ["cell", *keys, "steps", "train_loss", "eval_loss", *held_out, "tokens_per_s", "status"]
  curves = {job.cell.name: read_metrics(job.workdir) for job in jobs}
  rows = [_row(job, *curves[job.cell.name], failed) for job in jobs]
  for row in rows:
    result = (evaluations or {}).get(row["cell"], {})
    row.update({column: result[column] for column in held_out if result})
  with (workdir / "summary.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
  table = _markdown(columns, rows)
  (workdir / "summary.md").write_text(table + "\n")
  try:
    plot_losses(workdir / "loss_curves.png", curves)
  except ImportError:
    print("loss_curves.png skipped: matplotlib is missing (pip install 'jaxfrontier[plots]')")
  return table


def _row(job: Job, train: list[dict], evals: list[dict], failed: set[str]) -> dict:
  speeds = [r["tokens_per_s"] for r in train[1:] or train]  # the first includes the compile
  status = "failed" if job.cell.name in failed else "finished" if finished(job) else "unfinished"
  return {
    "cell": job.cell.name,
    **dict(job.cell.overrides),
    "steps": train[-1]["step"] if train else "",
    "train_loss": train[-1]["loss"] if train else "",
    "eval_loss": evals[-1]["eval_loss"] if evals else "",
    "tokens_per_s": sum(speeds) / len(speeds) if speeds else "",
    "status": status,
  }


def _markdown(columns: list[str], rows: list[dict]) -> str:
  def text(column, value):
    if isinstance(value, float):
      return f"{value:.0f}" if column == "tokens_per_s" else f"{value:.4f}"
    return str(value).replace("|", "\\|")

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(text(c, row.get(c, "")) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


def plot_losses(path, curves: dict[str, tuple[list[dict], list[dict]]]):
  """Train and eval loss against step side by side, one line per cell."""
  from matplotlib.figure import Figure  # noqa: PLC0415 - slow to import; only summaries plot.

  fig = Figure(figsize=(12, 4.5), layout="constrained")
  train_ax, eval_ax = fig.subplots(1, 2)
  for name, (train, evals) in curves.items():  # empty lines too, so colours match across panels
    train_ax.plot([r["step"] for r in train], [r["loss"] for r in train], ".-", label=name)
    eval_ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label=name)
  for ax, title in ((train_ax, "train loss"), (eval_ax, "eval loss")):
    ax.set(title=title, xlabel="step", ylabel="loss (nats/token)")
    ax.legend(fontsize="small")
  fig.savefig(path, dpi=100)
