"""Checkpoints and resume: a run killed (SIGKILL) after step 20 and resumed gives
the uninterrupted run's per-step losses bit for bit; a kill during an async save
leaves no step that restore would read; SIGTERM saves and exits cleanly; a
checkpoint saved on 8 devices restores onto 4; retention; a changed model
config against an existing workdir is an error naming the fields."""

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks.faults import PRESETS, SMALL, losses
from tests.conftest import ROOT, fake_devices_env, family_config, small_train_config
from trainer.trainer import Trainer


def _train(workdir, preset="dense", extra=(), devices=1):
  env = fake_devices_env(devices)
  cmd = [sys.executable, "scripts/train.py", "--config", PRESETS[preset], "--workdir", str(workdir)]
  return subprocess.Popen(
    cmd + SMALL + list(extra),
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def _kill_when(proc, ready, timeout=600):
  """SIGKILL `proc` as soon as `ready()` holds (polled every 2 ms)."""
  deadline = time.time() + timeout
  while not ready():
    assert proc.poll() is None, "the run ended before the kill"
    assert time.time() < deadline
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()


def _steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.parametrize("preset", ["dense", "moe"])
def test_killed_run_resumes_bit_identical(tmp_path, preset):
  steps = ["--config.train.steps=40", "--config.checkpoint.every=5"]
  _finish(_train(tmp_path / "straight", preset, steps))
  kill_at = random.Random().randint(21, 34)
  run = _train(tmp_path / "killed", preset, steps)
  _kill_when(run, lambda: max(losses(tmp_path / "killed"), default=0) >= kill_at)
  assert max(losses(tmp_path / "killed")) < 40, "killed too late to test resume"
  _finish(_train(tmp_path / "killed", preset, steps))
  straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "killed")
  assert sorted(resumed) == list(range(1, 41))
  assert resumed == straight, f"killed at step >= {kill_at}"  # exact float equality


def test_kill_during_async_save_restores_last_committed_step(tmp_path):
  workdir = tmp_path / "run"
  steps = ["--config.train.steps=30", "--config.checkpoint.every=1", "--config.checkpoint.keep=50"]
  run = _train(workdir, extra=steps)

  def saving():  # a step directory orbax has not committed (renamed) yet
    ckpt = workdir / "checkpoints"
    return ckpt.exists() and any(".orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir())

  _kill_when(run, saving)
  partial = [p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
  assert partial, "expected an uncommitted save on disk after the kill"
  committed = _steps(workdir)
  out = _finish(_train(workdir, extra=steps))
  assert not any("tmp" in p.name for p in (workdir / "checkpoints").iterdir()), out[-2000:]
  _finish(_train(tmp_path / "straight", extra=steps))
  assert losses(workdir) == losses(tmp_path / "straight")
  assert committed == [] or max(committed) < 30


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  steps = ["--config.train.steps=200", "--config.checkpoint.every=1000"]
  run = _train(tmp_path, extra=steps)
  deadline = time.time() + 600
  while max(losses(tmp_path), default=0) < 3:
    assert run.poll() is None and time.time() < deadline
    time.sleep(0.05)
  run.send_signal(signal.SIGTERM)
  out = _finish(run)
  assert "SIGTERM: saved step" in out
  last = max(losses(tmp_path))
  assert last < 200 and _steps(tmp_path) == [last]


def _small_moe(**mesh):
  config = family_config("deepseek_v3")
  config.model.update(num_layers=2, embed_dim=64, mlp_dim=128)
  config.train.update(steps=2, batch_size=8, seq_len=64, log_every=1, eval_batches=1)
  config.optim.warmup_steps = 1
  config.precision.compute_dtype = "float32"
  config.logging.progress_bar = False
  config.mesh.update(mesh)
  return config


def reshard_child(workdir: str, devices: int):
  """Run in a subprocess: train and save on 8 devices, or restore on 4 and dump the params."""
  import jax  # noqa: PLC0415

  assert jax.device_count() == devices
  if devices == 8:
    trainer = Trainer(_small_moe(data=2, fsdp=2, expert=2), workdir)
    trainer.run()
  else:
    trainer = Trainer(_small_moe(fsdp=4), workdir)  # restores step 2
    assert int(trainer.state["step"]) == 2
  flat = jax.tree_util.tree_flatten_with_path(trainer.state["params"])[0]
  arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}
  np.savez(f"{workdir}/params_{devices}.npz", **arrays)


def test_checkpoint_from_8_devices_restores_onto_4(tmp_path):
  for devices in (8, 4):
    env = fake_devices_env(devices)
    code = f"from tests.test_checkpoint import reshard_child; reshard_child({str(tmp_path)!r}, {devices})"
    done = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
  saved, restored = np.load(tmp_path / "params_8.npz"), np.load(tmp_path / "params_4.npz")
  assert sorted(saved.files) == sorted(restored.files) and len(saved.files) > 10
  for key in saved.files:
    np.testing.assert_array_equal(restored[key], saved[key])


def test_retention_keeps_the_last_k_and_every_m(tmp_path):
  config = small_train_config("llama3", steps=12)
  config.checkpoint.update(every=2, keep=2, keep_every=4)
  Trainer(config, str(tmp_path)).run()
  assert _steps(tmp_path) == [4, 8, 10, 12]
  saved = json.loads((tmp_path / "checkpoints" / "12" / "config" / "metadata").read_text())
  assert saved["model"]["num_layers"] == config.model.num_layers


def test_changed_model_config_against_a_workdir_is_an_error(tmp_path):
  config = small_train_config("llama3", steps=6)
  Trainer(config, str(tmp_path)).run()
  config.model.num_layers += 1
  config.model.mlp_dim = 96
  with pytest.raises(
    ValueError, match=r"model\.mlp_dim: 128 in the checkpoint, 96 now.*num_layers"
  ):
    Trainer(config, str(tmp_path))
  config = small_train_config("llama3", steps=8)  # a longer run of the same model resumes
  assert Trainer(config, str(tmp_path)).run()["train"]["step"] == 8


def test_model_fields_added_since_the_checkpoint_resume_at_their_defaults():
  """A checkpoint written before a model field existed resumes while the field
  holds its default; set to anything else, the field is named."""
  from trainer.trainer import check_same_model  # noqa: PLC0415

  now = json.loads(small_train_config("llama3").to_json())  # as the trainer compares them
  saved = json.loads(json.dumps(now))
  del saved["model"]["residual_scale"]  # as written before the field existed
  check_same_model(saved, now)
  now["model"]["residual_scale"]["mlp_alpha"] = 2.0
  with pytest.raises(
    ValueError, match=r"residual_scale\.mlp_alpha: '\(absent\)' in the .*, 2\.0 now"
  ):
    check_same_model(saved, now)


def test_background_threads_closed_event_loop_errors_are_quiet():
  """train.py drops the "Event loop is closed" tracebacks orbax's threads can print
  after a failed save, and nothing else."""
  code = """
import asyncio, concurrent.futures, runpy, threading
runpy.run_path("scripts/train.py", run_name="train")["_quiet_closed_loops"]()
loop = asyncio.new_event_loop()
loop.close()
late = lambda *_: loop.call_soon_threadsafe(print)
thread = threading.Thread(target=late)
thread.start(); thread.join()
future = concurrent.futures.Future()
future.add_done_callback(late)
future.set_result(1)
thread = threading.Thread(target=lambda: 1 / 0)
thread.start(); thread.join()
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert "Event loop is closed" not in out.stderr, out.stderr
  assert "ZeroDivisionError" in out.stderr, out.stderr
