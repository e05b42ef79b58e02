"""Training end to end on the default corpus: loss falls, metrics are written,
compile time is flat in depth."""

import importlib.util
import json
import shutil
import struct
import time

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import NamedSharding

from tests.conftest import small_train_config
from trainer import step
from trainer.checks import resolve_shuffle
from trainer.trainer import Trainer


def test_short_run_writes_metrics_and_loss_falls(tmp_path):
  config = small_train_config("llama3", steps=40, eval_every=20)
  result = Trainer(config, str(tmp_path)).run()
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if "loss" in r]
  evals = [r for r in records if "eval_loss" in r]
  assert [r["step"] for r in train] == [10, 20, 30, 40]
  assert all({"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= r.keys() for r in train)
  assert [r["step"] for r in evals] == [20, 40]
  assert train[-1]["loss"] < train[0]["loss"] - 0.5
  assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
  assert result["eval"]["eval_loss"] == evals[-1]["eval_loss"]
  assert (tmp_path / "config.json").exists()
  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  assert [step for step, _ in scalars["loss"]] == [10, 20, 30, 40]
  np.testing.assert_allclose([v for _, v in scalars["loss"]], [r["loss"] for r in train], rtol=1e-6)
  assert [step for step, _ in scalars["eval_loss"]] == [20, 40]


def _tensorboard_scalars(directory) -> dict:
  """tag -> [(step, value)] read back from the TFRecord event files."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415

  out = {}
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4  # length, its crc, the record, its crc
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_the_package_fails_before_training(tmp_path):
  config = small_train_config("llama3", steps=10)
  config.logging.wandb = True
  with pytest.raises(ValueError, match="logging.wandb=True needs the wandb package"):
    Trainer(config, str(tmp_path))


def test_rerun_in_same_workdir_resumes_from_checkpoint(tmp_path):
  config = small_train_config("llama3", steps=20)
  config.checkpoint.every = 10
  straight = Trainer(config, str(tmp_path)).run()
  shutil.rmtree(tmp_path / "checkpoints" / "20")  # as if killed between steps 10 and 20
  resumed = Trainer(config, str(tmp_path)).run()
  assert resumed["train"]["step"] == 20
  assert resumed["train"]["loss"] == straight["train"]["loss"]
  assert resumed["eval"]["eval_loss"] == straight["eval"]["eval_loss"]


def test_resume_keeps_the_checkpoints_row_shuffle_or_names_the_field():
  config = small_train_config("llama3")  # data.shuffle_tokens on (the default)
  assert resolve_shuffle(config, None, "/w") is None  # a fresh run
  assert resolve_shuffle(config, {"data": {"shuffle_tokens": 4096}}, "/w") is None
  note = resolve_shuffle(config, {"data": {"path": ""}}, "/w")  # before the field existed
  assert "predates the row shuffle" in note and config.data.shuffle_tokens == 0
  with pytest.raises(ValueError) as error:
    resolve_shuffle(config, {"data": {"shuffle_tokens": 4096}}, "/w")
  assert str(error.value).startswith("data.shuffle_tokens=0 but the checkpoints in /w")
  assert "--config.data.shuffle_tokens=4096" in str(error.value)


def test_train_state_starts_in_its_shardings_so_the_step_compiles_once(tmp_path):
  """Every leaf of the initial state (optimizer moments and step counts too) is a
  committed NamedSharding array, the moments laid out like their params, and the
  steps return the state in that same layout: the step's first compile is its last."""
  config = small_train_config(steps=3, log_every=1)
  config.optim.warmup_steps = 1
  trainer = Trainer(config, str(tmp_path))
  shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
  initial = shardings(trainer.state)
  assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(initial))
  assert all(x.committed for x in jax.tree.leaves(trainer.state))
  mu = trainer.state["opt"][1][0].mu  # adamw: chain(clip, adam, ...)
  assert shardings(mu) == shardings(trainer.state["params"])
  trainer.run()
  same = lambda x, s: x.sharding.is_equivalent_to(s, x.ndim)
  assert all(jax.tree.leaves(jax.tree.map(same, trainer.state, initial)))


def _compile_seconds(num_layers: int) -> float:
  config = small_train_config("llama3")
  config.model.num_layers = num_layers
  config.compute.scan_layers = "scan"
  mesh = jax.sharding.Mesh(
    np.asarray(jax.devices()[:1]).reshape(1, 1, 1, 1), ("data", "fsdp", "tensor", "expert")
  )
  program = step.build(config, mesh)
  start = time.perf_counter()
  program.lower().compile()
  return time.perf_counter() - start


def test_compile_time_does_not_grow_with_depth():
  # Real compiles: the suite's persistent cache would serve the second 2-layer one
  # (JAX decides once whether to use it; reset_cache makes it decide again).
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    _compile_seconds(2)  # warm up tracing caches shared by both
    shallow, deep = _compile_seconds(2), _compile_seconds(32)
  finally:
    jax.config.update("jax_enable_compilation_cache", True)
    compilation_cache.reset_cache()
  assert deep < 2 * shallow, f"2 layers: {shallow:.2f}s, 32 layers: {deep:.2f}s"


def test_bfloat16_compute_trains_close_to_float32(tmp_path):
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = small_train_config("gemma3", steps=20)
    config.precision.compute_dtype = dtype
    losses[dtype] = Trainer(config, str(tmp_path / dtype)).run()["train"]["loss"]
  assert np.isfinite(losses["bfloat16"])
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)


def test_a_smoke_run_shorter_than_its_warmup_warms_up_for_a_tenth_of_it(capsys):
  from trainer import checks  # noqa: PLC0415
  from trainer.trainer import progress_fields  # noqa: PLC0415

  config = small_train_config("llama3", steps=3)
  config.optim.warmup_steps = 30
  assert "warmup_steps=30 is not below train.steps=3; warming up for 0 steps" in checks.cap_warmup(
    config
  )
  assert config.optim.warmup_steps == 0
  checks.validate(config)  # no error left
  config.train.steps, config.optim.warmup_steps = 100, 30
  assert checks.cap_warmup(config) is None and config.optim.warmup_steps == 30
  # A device without a known peak FLOP/s: no MFU in the record, "unknown peak" shown.
  assert progress_fields({"loss": 1.0, "tokens_per_s": 10.0})["mfu"] == "unknown peak"
  assert progress_fields({"loss": 1.0, "tokens_per_s": 10.0, "mfu": 0.25})["mfu"] == "25.0%"


def test_print_config_prints_the_preset_with_overrides_and_exits(tmp_path):
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  from tests.conftest import ROOT  # noqa: PLC0415

  out = subprocess.run(
    [sys.executable, "scripts/train.py", "--config", "configs/llama3.py:tiny",
     "--config.train.steps=7", "--print_config"],
    cwd=ROOT, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert out.returncode == 0, out.stderr[-2000:]
  assert "  steps: 7\n" in out.stdout and "family: llama3" in out.stdout


def test_profile_steps_write_a_trace_under_the_workdir(tmp_path):
  config = small_train_config("llama3", steps=4, log_every=2)
  config.optim.warmup_steps = 1
  config.logging.profile_steps = (2, 3)
  Trainer(config, str(tmp_path / "run")).run()
  for pattern in ("*.xplane.pb", "*.trace.json.gz"):  # TensorBoard's, Perfetto's
    traces = list((tmp_path / "run" / "profile").rglob(pattern))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
  config.logging.profile_steps = (5, 2)
  with pytest.raises(ValueError, match=r"logging.profile_steps=\(5, 2\) must be \(first, last\)"):
    Trainer(config, str(tmp_path / "bad"))


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
  """The W&B run id is kept in the workdir and passed with resume="allow"."""
  import sys  # noqa: PLC0415
  import types  # noqa: PLC0415

  from trainer import metrics  # noqa: PLC0415

  inits = []

  class Run:
    log = finish = lambda *a, **k: None  # noqa: E731

  fake = types.ModuleType("wandb")
  fake.init = lambda **kw: inits.append(kw) or Run()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  cfg = small_train_config("llama3").logging
  cfg.wandb = True
  for _ in range(2):  # the run, then its resume in the same workdir
    metrics.Writer(str(tmp_path), True, cfg, {}).close()
  assert inits[0]["id"] == inits[1]["id"] == (tmp_path / "wandb_run_id").read_text()
  assert inits[0]["resume"] == "allow"
