"""Ablation sweeps: cells from a grid or a list, commands, summaries, skip and resume."""

import csv
import json
import math
import shlex
import subprocess
import sys

import matplotlib.image
import pytest

from tests.conftest import ROOT
from trainer import sweep

CONFIG = "configs/llama3.py:tiny"
# A cell trains in ~15 s on a 2-core CPU: 6 steps of 4 x 32 tokens, a 64-wide model.
TINY = [
  "--config.train.steps=6",
  "--config.train.log_every=2",
  "--config.train.eval_every=6",
  "--config.train.eval_batches=1",
  "--config.train.batch_size=4",
  "--config.train.seq_len=32",
  "--config.model.num_layers=1",  # a cell's own overrides come after these, so they win
  "--config.model.embed_dim=64",
  "--config.model.mlp_dim=128",
  "--config.optim.warmup_steps=2",
  "--config.logging.progress_bar=False",
  "--config.logging.tensorboard=False",
]
GRID = ["--sweep", "optim.lr=1e-3,3e-3", "--sweep", "model.num_layers=1,2"]
NAMES = [
  "lr=1e-3_num_layers=1",
  "lr=1e-3_num_layers=2",
  "lr=3e-3_num_layers=1",
  "lr=3e-3_num_layers=2",
]


def run_sweep(workdir, *args):
  return subprocess.run(
    [sys.executable, "scripts/sweep.py", "--config", CONFIG, "--workdir", str(workdir), *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )


def records(celldir) -> tuple[list[dict], list[dict]]:
  lines = [json.loads(line) for line in (celldir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in lines if "loss" in r], [r for r in lines if "eval_loss" in r]


def read_csv(path) -> list[dict]:
  with path.open(newline="") as f:
    return list(csv.DictReader(f))


def check_png(path):
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  image = matplotlib.image.imread(path)
  assert image.shape[0] > 0 and image.shape[1] > 0


def test_grid_is_the_cartesian_product_with_the_first_key_slowest():
  cells = sweep.grid(["optim.lr=1e-3,3e-3", "model.num_layers=1,2"])
  assert [c.name for c in cells] == NAMES
  assert [c.overrides for c in cells] == [
    (("optim.lr", "1e-3"), ("model.num_layers", "1")),
    (("optim.lr", "1e-3"), ("model.num_layers", "2")),
    (("optim.lr", "3e-3"), ("model.num_layers", "1")),
    (("optim.lr", "3e-3"), ("model.num_layers", "2")),
  ]
  assert cells[0].args == ["--config.optim.lr=1e-3", "--config.model.num_layers=1"]


def test_values_split_only_at_top_level_commas():
  key, values = sweep.parse_sweep("model.ffn_pattern=('dense','moe'),('moe',)")
  assert (key, values) == ("model.ffn_pattern", ["('dense','moe')", "('moe',)"])
  assert sweep.parse_sweep("data.path='a,b',[1,2],c")[1] == ["'a,b'", "[1,2]", "c"]
  names = [c.name for c in sweep.grid(["model.ffn_pattern=('dense','moe'),('moe',)"])]
  assert names == ["ffn_pattern=dense-moe", "ffn_pattern=moe"]


def test_names_use_the_shortest_key_suffix_that_is_unique():
  keys = ["optim.lr", "model.moe.top_k", "model.mtp.top_k"]
  assert sweep.short_keys(keys) == {
    "optim.lr": "lr",
    "model.moe.top_k": "moe.top_k",
    "model.mtp.top_k": "mtp.top_k",
  }


def test_two_cells_with_one_name_are_an_error():
  with pytest.raises(ValueError, match="both named 'ffn_pattern=moe'"):
    sweep.grid(["model.ffn_pattern=('moe',),moe"])


@pytest.mark.parametrize("spec", ["optim.lr", "optim.lr=", "optim.lr=1,,2", "=1,2"])
def test_bad_sweep_syntax_is_an_error(spec):
  with pytest.raises(ValueError, match="must be KEY=V1,V2"):
    sweep.grid([spec])


def test_list_file_gives_named_and_quoted_cells(tmp_path):
  path = tmp_path / "cells.txt"
  path.write_text(
    "# baseline first\n"
    "\n"
    "baseline:\n"
    "optim.lr=1e-3 model.num_layers=2  # a trailing comment\n"
    "moe: model.ffn_pattern=\"('moe',)\" model.moe.num_experts=4\n"
  )
  cells = sweep.read_list(str(path))
  assert [c.name for c in cells] == ["baseline", "lr=1e-3_num_layers=2", "moe"]
  assert cells[0].overrides == ()
  assert cells[1].overrides == (("optim.lr", "1e-3"), ("model.num_layers", "2"))
  assert cells[2].args == [
    "--config.model.ffn_pattern=('moe',)",
    "--config.model.moe.num_experts=4",
  ]


def test_list_file_word_without_equals_is_an_error_naming_the_line(tmp_path):
  path = tmp_path / "cells.txt"
  path.write_text("optim.lr=1e-3\noptim.lr 3e-3\n")
  with pytest.raises(ValueError, match=r"cells.txt:2: 'optim.lr' is not KEY=VALUE"):
    sweep.read_list(str(path))


def test_dry_run_prints_each_cells_command_and_runs_nothing(tmp_path):
  result = run_sweep(tmp_path / "sweep", *GRID, "--config.train.steps=6", "--dry-run")
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line) for line in result.stdout.splitlines()]
  assert len(commands) == 4
  for command, cell in zip(commands, sweep.grid(GRID[1::2]), strict=True):
    assert command[1:] == [
      str(ROOT / "scripts" / "train.py"),
      "--config",
      CONFIG,
      "--workdir",
      str(tmp_path / "sweep" / cell.name),
      "--config.train.steps=6",
      *cell.args,
    ]
  assert not (tmp_path / "sweep").exists()


def test_emit_writes_one_command_per_cell(tmp_path):
  emitted = tmp_path / "cells.sh"
  tuple_sweep = ["--sweep", "model.ffn_pattern=('dense','moe'),('moe',)"]
  result = run_sweep(tmp_path / "sweep", *tuple_sweep, "--sweep", "optim.lr=1,2", "--emit", emitted)
  assert result.returncode == 0, result.stderr
  lines = emitted.read_text().splitlines()
  assert len(lines) == 4
  assert shlex.split(lines[1])[-2:] == [
    "--config.model.ffn_pattern=('dense','moe')",
    "--config.optim.lr=2",
  ]
  assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
  "args",
  [
    ["--sweep", "optim.lrr=1e-3,3e-3"],
    ["--sweep", "optim.lr=1e-3", "--config.train.stepz=3"],
    ["--list", "LIST"],
  ],
  ids=["sweep", "common", "list"],
)
def test_unknown_key_fails_with_one_line_naming_it(args, tmp_path):
  (tmp_path / "cells.txt").write_text("optim.lr=1e-3\nmodel.num_layerz=2\n")
  args = [str(tmp_path / "cells.txt") if a == "LIST" else a for a in args]
  result = run_sweep(tmp_path / "sweep", *args)
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0
  assert len(lines) == 1 and lines[0].startswith("error: unknown config key"), result.stderr
  assert any(key in lines[0] for key in ("optim.lrr", "train.stepz", "model.num_layerz"))
  assert not (tmp_path / "sweep").exists()


def test_a_step_logged_twice_keeps_its_last_record(tmp_path):
  lines = [{"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.0}, {"step": 4, "loss": 2.5}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  train, evals = sweep.read_metrics(tmp_path)
  assert [r["loss"] for r in train] == [3.0, 2.5] and evals == []


def write_metrics(celldir, lines, checkpoint=None):
  celldir.mkdir(parents=True)
  (celldir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  if checkpoint is not None:
    (celldir / "checkpoints" / str(checkpoint)).mkdir(parents=True)
    (celldir / "checkpoints" / str(checkpoint) / "commit_success.txt").write_text("ok")


def test_summary_has_one_row_per_cell_from_its_metrics(tmp_path):
  cells = sweep.grid(["optim.lr=1e-3,3e-3,1e-2"])
  jobs = sweep.plan(cells, CONFIG, str(tmp_path), ["--config.train.steps=6"], "train.py")
  write_metrics(
    jobs[0].workdir,
    [
      {"step": 2, "loss": 6.0, "tokens_per_s": 100.0},
      {"step": 4, "loss": 5.75, "tokens_per_s": 200.0},
      {"step": 6, "loss": 5.5, "tokens_per_s": 400.0},
      {"step": 6, "eval_loss": 5.25},
    ],
    checkpoint=6,
  )
  write_metrics(jobs[1].workdir, [{"step": 2, "loss": 6.5, "tokens_per_s": 50.0}], checkpoint=2)
  table = sweep.write_summary(tmp_path, jobs, failed={"lr=1e-2"})
  assert read_csv(tmp_path / "summary.csv") == [
    {
      "cell": "lr=1e-3",
      "optim.lr": "1e-3",
      "steps": "6",
      "train_loss": "5.5",
      "eval_loss": "5.25",
      "tokens_per_s": "300.0",  # the first record (compile) left out
      "status": "finished",
    },
    {
      "cell": "lr=3e-3",
      "optim.lr": "3e-3",
      "steps": "2",
      "train_loss": "6.5",
      "eval_loss": "",
      "tokens_per_s": "50.0",
      "status": "unfinished",
    },
    {
      "cell": "lr=1e-2",
      "optim.lr": "1e-2",
      "steps": "",
      "train_loss": "",
      "eval_loss": "",
      "tokens_per_s": "",
      "status": "failed",
    },
  ]
  assert (tmp_path / "summary.md").read_text() == table + "\n"
  assert "| lr=1e-3 | 1e-3 | 6 | 5.5000 | 5.2500 | 300 | finished |" in table
  assert "| lr=3e-3 | 3e-3 | 2 | 6.5000 |  | 50 | unfinished |" in table
  assert "| lr=1e-2 | 1e-2 |  |  |  |  | failed |" in table
  check_png(tmp_path / "loss_curves.png")


def test_without_matplotlib_the_summary_says_how_to_get_plots(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails: not installed
  jobs = sweep.plan(sweep.grid(["optim.lr=1e-3"]), CONFIG, str(tmp_path), [], "train.py")
  write_metrics(jobs[0].workdir, [{"step": 2, "loss": 6.0, "tokens_per_s": 100.0}], checkpoint=2)
  sweep.write_summary(tmp_path, jobs)
  assert (tmp_path / "summary.csv").is_file() and not (tmp_path / "loss_curves.png").exists()
  assert "pip install 'jaxfrontier[plots]'" in capsys.readouterr().out


def check_evaluations(workdir, rows, max_batches):
  """Each row's held-out numbers are finite, positive, in summary.md, and what
  inference.evaluate gives for the cell's workdir when called directly."""
  from trainer import inference  # noqa: PLC0415 - jax; only the tests that evaluate need it.

  table = (workdir / "summary.md").read_text()
  for row in rows:
    values = [float(row[column]) for column in sweep.EVAL_COLUMNS]
    assert all(math.isfinite(v) and v > 0 for v in values), row
    assert "| {:.4f} | {:.4f} | {:.4f} |".format(*values) in table
    config, model = inference.load(str(workdir / row["cell"]))
    direct = inference.evaluate(
      config, model, batch_size=config.train.batch_size, seq_len=config.train.seq_len,
      max_batches=max_batches, progress=False,
    )  # fmt: skip
    assert float(row["nats_per_token"]) == pytest.approx(direct["nats_per_token"], abs=1e-5)


def test_sweep_trains_summarises_then_skips_finished_cells_and_evaluates_them(tmp_path):
  workdir = tmp_path / "sweep"
  result = run_sweep(workdir, *GRID, *TINY)
  assert result.returncode == 0, result.stdout + result.stderr
  rows = read_csv(workdir / "summary.csv")
  assert [r["cell"] for r in rows] == NAMES
  for row in rows:
    train, evals = records(workdir / row["cell"])
    assert int(row["steps"]) == train[-1]["step"] == 6
    assert float(row["train_loss"]) == train[-1]["loss"]
    assert float(row["eval_loss"]) == evals[-1]["eval_loss"]
    assert row["status"] == "finished"
    config = json.loads((workdir / row["cell"] / "config.json").read_text())
    assert (config["optim"]["lr"], config["model"]["num_layers"]) == (
      float(row["optim.lr"]),
      int(row["model.num_layers"]),
    )
  assert [(r["optim.lr"], r["model.num_layers"]) for r in rows] == [
    ("1e-3", "1"),
    ("1e-3", "2"),
    ("3e-3", "1"),
    ("3e-3", "2"),
  ]
  table = (workdir / "summary.md").read_text()
  assert all(f"| {name} |" in table and f"| {name} |" in result.stdout for name in NAMES)
  check_png(workdir / "loss_curves.png")

  assert not set(sweep.EVAL_COLUMNS) & set(rows[0])  # only with --evaluate

  before = {name: (workdir / name / "metrics.jsonl").read_bytes() for name in NAMES}
  again = run_sweep(workdir, *GRID, *TINY, "--evaluate", "--eval_batches=2")
  assert again.returncode == 0, again.stdout + again.stderr
  skipped = [line for line in again.stdout.splitlines() if line.startswith("skip ")]
  assert skipped == [f"skip {name} (finished at step 6)" for name in NAMES]
  assert "run:" not in again.stdout and "resume" not in again.stdout
  assert before == {name: (workdir / name / "metrics.jsonl").read_bytes() for name in NAMES}
  evaluated = read_csv(workdir / "summary.csv")
  assert [{key: r[key] for key in rows[0]} for r in evaluated] == rows
  check_evaluations(workdir, evaluated, max_batches=2)


def test_rerun_with_more_steps_resumes_each_cell(tmp_path):
  workdir, cell = tmp_path / "sweep", tmp_path / "sweep" / "lr=3e-3"
  fewer = [a.replace("steps=6", "steps=4") for a in TINY]
  assert run_sweep(workdir, "--sweep", "optim.lr=3e-3", *fewer).returncode == 0
  assert sweep.latest_step(cell) == 4
  result = run_sweep(workdir, "--sweep", "optim.lr=3e-3", *TINY)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "resume from step 4: lr=3e-3" in result.stdout
  train, evals = records(cell)
  assert [r["step"] for r in train] == [2, 4, 6]
  assert [r["step"] for r in evals] == [4, 6]
  assert sweep.latest_step(cell) == 6
  assert read_csv(workdir / "summary.csv")[0]["status"] == "finished"


def test_failing_cells_are_reported_and_the_sweep_goes_on(tmp_path):
  workdir = tmp_path / "sweep"
  result = run_sweep(workdir, "--sweep", "model.num_kv_heads=3,5", *TINY, "--evaluate")
  assert result.returncode != 0
  for name in ("num_kv_heads=3", "num_kv_heads=5"):
    log = workdir / name / "train.log"
    assert f"failed: {name} exited with code 1; log: {log}" in result.stdout
    assert "model.num_kv_heads" in log.read_text()
  assert result.stderr.strip().splitlines()[-1] == (
    "error: 2 of 2 cells failed: num_kv_heads=3, num_kv_heads=5"
  )
  rows = read_csv(workdir / "summary.csv")
  assert [r["status"] for r in rows] == ["failed", "failed"]
  assert [[r[column] for column in sweep.EVAL_COLUMNS] for r in rows] == [["", "", ""]] * 2
