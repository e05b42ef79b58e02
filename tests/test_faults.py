"""Faults end in one sentence and a safe state: data that gives nothing, nan/inf
steps, unwritable or shared workdirs, corrupt checkpoints, signals at any phase,
and SIGKILL at random points (benchmarks/faults.py; `scripts/bench.py faults`
runs more trials)."""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks import faults
from tests.conftest import ROOT, family_config
from trainer import checkpoint, data_check, metrics, workdir
from trainer.checks import resume_changes
from trainer.trainer import NonFinite, Trainer


def _data_cfg(path, **kw):
  config = family_config("llama3")
  config.data.update(path=str(path), **kw)
  return config.data


def _check(path, batch_size=2, seq_len=32, **kw):
  said = []
  data_check.check_yields(_data_cfg(path, **kw), batch_size=batch_size, seq_len=seq_len,
                          shards=1, rows=slice(0, batch_size), warn=said.append)  # fmt: skip
  return said


@pytest.mark.parametrize(
  "name,content,needle",
  [
    ("empty.txt", b"", "empty.txt is empty"),
    ("binary.txt", bytes(range(128, 256)) * 20, "binary.txt is not UTF-8 text"),
    ("records.jsonl", b'{"content": "hi"}\n', "no record with a string under the field 'text'"),
  ],
)
def test_data_that_gives_no_documents_is_one_sentence_naming_the_file(tmp_path, name, content,
                                                                      needle):  # fmt: skip
  (tmp_path / name).write_bytes(content)
  with pytest.raises(ValueError, match="gave no documents") as e:
    _check(tmp_path / name)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_eval_fraction_one_blames_eval_fraction():
  with pytest.raises(ValueError, match=r"data.eval_fraction=1.0 puts all \d+ files"):
    _check("", eval_fraction=1.0)


def test_small_corpus_and_missing_eval_split_warn(tmp_path):
  (tmp_path / "a.txt").write_text("hello world")
  said = _check(tmp_path / "a.txt", eval_fraction=0.0)
  assert any("less than one batch" in s for s in said)
  assert any("no eval split" in s for s in said)


def test_workdir_that_is_a_file_or_cannot_be_made_is_one_sentence(tmp_path):
  (tmp_path / "f").write_text("")
  with pytest.raises(ValueError, match="is a file, not a directory"):
    workdir.prepare(tmp_path / "f")
  with pytest.raises(ValueError, match="cannot write to"):
    workdir.prepare(tmp_path / "f" / "sub")


def test_a_second_run_cannot_take_a_workdir_in_use_and_a_stale_lock_is_taken_over(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    lock_file = tmp_path / workdir.LOCK_FILE
    lock_file.write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid, "since": 0}))
    with pytest.raises(ValueError, match=f"in use by process {holder.pid}"):
      workdir.Lock(tmp_path).acquire()
  finally:
    holder.kill()
    holder.wait()
  said, lock = [], workdir.Lock(tmp_path)
  lock.acquire(say=said.append)  # the holder is gone: its lock is stale
  assert said and "no longer running" in said[0]
  assert json.loads(lock_file.read_text())["pid"] == os.getpid()
  lock.release()
  assert not lock_file.exists()


def test_metrics_jsonl_stays_strict_json(tmp_path):
  writer = metrics.Writer(str(tmp_path))
  writer.write({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "x": [1.0, np.nan]})
  writer.close()
  strict = lambda c: (_ for _ in ()).throw(ValueError(c))
  record = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=strict)
  assert record == {"step": 1, "loss": None, "grad_norm": None, "x": [1.0, None]}


def test_a_record_cut_short_by_a_kill_is_dropped_when_the_run_resumes(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
  writer = metrics.Writer(str(tmp_path))
  writer.write({"step": 2, "loss": 1.5})
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
    {"step": 1, "loss": 2.0},
    {"step": 2, "loss": 1.5},
  ]


def test_resume_with_changed_data_settings_says_what_changed():
  saved = family_config("llama3").to_dict()
  now = family_config("llama3")
  now.train.batch_size, now.optim.lr = 8, 1e-4
  notes = resume_changes(saved, now.to_dict())
  assert any("train.batch_size" in n and "not an exact resume" in n for n in notes)
  assert any("optim.lr" in n and "applies from this step on" in n for n in notes)


_STOPPER = """
import os, sys, threading, time
sys.path.insert(0, {root!r})
from trainer.stopping import Stopper
s = Stopper({timeout}, lambda: "step 7").__enter__()
s.phase = {phase!r}
print("ready", flush=True)
threading.Lock().acquire(); threading.Lock().acquire()  # unrelated locks: returns
lock = threading.Lock(); lock.acquire(); lock.acquire()  # blocks for good
"""


def _stopper(phase, timeout=60.0):
  code = _STOPPER.format(root=str(ROOT), timeout=timeout, phase=phase)
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
  assert proc.stdout.readline().strip() == "ready"
  return proc


def _exits_within(proc, seconds):
  begun = time.time()
  _, err = proc.communicate(timeout=seconds)
  return time.time() - begun, err


def test_a_signal_during_setup_exits_at_once_naming_the_last_checkpoint():
  proc = _stopper("setup")
  proc.send_signal(signal.SIGTERM)
  took, err = _exits_within(proc, 10)
  assert proc.returncode == 128 + signal.SIGTERM and took < 5
  assert "during setup" in err and "step 7" in err


def test_a_blocked_step_exits_after_the_timeout_and_a_second_signal_at_once():
  proc = _stopper("train", timeout=1.0)
  proc.send_signal(signal.SIGINT)
  took, err = _exits_within(proc, 10)
  assert proc.returncode == 128 + signal.SIGINT and took < 5, err
  assert "did not finish within checkpoint.stop_timeout_s=1" in err
  proc = _stopper("save")
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  took, err = _exits_within(proc, 10)
  assert proc.returncode == 128 + signal.SIGTERM and "again: exiting now" in err


def _tiny(tmp_path, **train):
  config = family_config("llama3")
  config.model.update(num_layers=1, embed_dim=64, mlp_dim=128)
  config.train.update(steps=4, batch_size=2, seq_len=32, log_every=1, eval_batches=1)
  config.train.update(train)
  config.optim.warmup_steps = 0
  config.checkpoint.every = 1
  config.precision.compute_dtype = "float32"
  config.logging.update(progress_bar=False, tensorboard=False)
  return config


def test_nan_steps_are_never_saved_and_the_error_names_a_committed_finite_step(tmp_path):
  config = _tiny(tmp_path, steps=12, log_every=5)
  config.optim.lr = 1e3
  config.checkpoint.every = 2
  with pytest.raises(NonFinite, match="is not finite") as e:
    Trainer(config, str(tmp_path)).run()
  committed = checkpoint.committed_steps(tmp_path / "checkpoints")
  message = str(e.value)
  assert committed and f"the last committed checkpoint is step {committed[0]};" in message
  config.optim.lr, config.train.steps = 1e-3, committed[0]
  trainer = Trainer(config, str(tmp_path))  # restores the newest committed step
  params = [np.asarray(x) for x in __import__("jax").tree.leaves(trainer.state["params"])]
  trainer.close()
  assert all(np.isfinite(p).all() for p in params)


def test_corrupt_newest_checkpoint_falls_back_one_step_and_finished_runs_say_so(tmp_path, capsys):
  config = _tiny(tmp_path, steps=3)
  Trainer(config, str(tmp_path)).run()
  newest = tmp_path / "checkpoints" / "3" / "state"
  for f in newest.rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(b"garbage")
  config.train.steps = 4
  result = Trainer(config, str(tmp_path)).run()
  err = capsys.readouterr().err
  assert "checkpoint step 3" in err and "resumed from step 2" in err
  assert (tmp_path / "checkpoints" / "3.unreadable").is_dir() and result["train"]["step"] == 4
  result = Trainer(config, str(tmp_path)).run()
  assert result["finished"] and "is finished (step 4 of train.steps=4)" in capsys.readouterr().err
  data_state = next((tmp_path / "checkpoints" / "4" / "data").glob("process_*.json"))
  data_state.write_text("{not json")
  config.train.steps, config.checkpoint.fallback = 5, False
  with pytest.raises(checkpoint.RestoreFailed, match=f"data-iterator state {data_state}"):
    Trainer(config, str(tmp_path))
  for step in (2, 3):  # every step unreadable: nothing is moved aside, one sentence
    for f in (tmp_path / "checkpoints" / str(step) / "data").glob("process_*.json"):
      f.write_text("{not json")
  config.checkpoint.fallback = True
  with pytest.raises(checkpoint.RestoreFailed, match="step 3 cannot be read either"):
    Trainer(config, str(tmp_path))
  assert (tmp_path / "checkpoints" / "4").is_dir()


def test_a_failing_save_stops_the_run_with_one_sentence(tmp_path):
  config = _tiny(tmp_path, steps=6)
  trainer = Trainer(config, str(tmp_path))

  def full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  trainer.checkpointer.manager.save = full
  with pytest.raises(checkpoint.SaveFailed) as e:
    trainer.run()
  assert "No space left on device" in str(e.value) and "the last committed step is none" in str(
    e.value
  )
  assert not (tmp_path / workdir.LOCK_FILE).exists()


def test_sigkill_at_random_points_resumes_bit_identical(tmp_path):
  seed = random.Random().randrange(1 << 30)
  records = faults.run_trials(3, tmp_path, seed, presets=("dense", "moe"))
  for rec in records:
    assert rec["bit_identical"] and rec["half_written_visible"] == 0, (seed, rec)


def test_help_exits_zero_and_a_wrongly_typed_override_names_the_field():
  run = lambda *a: subprocess.run([sys.executable, "scripts/train.py", *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
  assert run("--help").returncode == 0
  bad = run("--config", "configs/llama3.py:tiny", "--workdir", "/tmp/x", "--config.train.steps=abc")
  assert bad.returncode == 1
  assert bad.stderr.strip() == (
    "error: --config.train.steps='abc' is not a valid int: train.steps takes int values "
    "(default 300)"
  )


def test_nan_learning_rate_is_a_config_error(tmp_path):
  config = _tiny(tmp_path)
  config.optim.lr = float("nan")
  with pytest.raises(ValueError, match="optim.lr=nan must be a positive finite number"):
    Trainer(config, str(tmp_path / "w"))
  assert not pathlib.Path(tmp_path / "w").exists()  # nothing made before the config is valid


def test_a_run_with_zero_gradients_warns(tmp_path, capsys):
  config = _tiny(tmp_path, steps=21, log_every=21)
  config.checkpoint.every = 0
  config.train.init_std = 0.0  # all-zero weights: every gradient is exactly 0
  Trainer(config, str(tmp_path)).run()
  assert "grad norm has been exactly 0 for 20 steps" in capsys.readouterr().err


def _train_py(workdir, *extra):
  args = [f"--config.{a}" for a in (
    "model.num_layers=1", "model.embed_dim=64", "model.mlp_dim=128", "train.batch_size=2",
    "train.seq_len=32", "train.log_every=1", "optim.warmup_steps=0",
    "precision.compute_dtype=float32", "logging.progress_bar=False",
    "logging.tensorboard=False",
  )]  # fmt: skip
  cmd = [sys.executable, "scripts/train.py", "--config", "configs/llama3.py:tiny",
         "--workdir", str(workdir), *args, *extra]  # fmt: skip
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)  # fmt: skip


def _wait_for(proc, needle: str, timeout=300) -> str:
  """Reads the run's output until a line holds `needle`; returns what was read."""
  seen, deadline = "", time.time() + timeout
  while time.time() < deadline:
    line = proc.stdout.readline()
    assert line, f"the run ended before {needle!r}:\n{seen}"
    seen += line
    if needle in line:
      return seen
  raise TimeoutError(needle)


def test_a_second_run_in_a_workdir_in_use_stops_with_one_sentence(tmp_path):
  first = _train_py(tmp_path, "--config.train.steps=10000")
  try:
    _wait_for(first, "attention kernels")
    second = _train_py(tmp_path, "--config.train.steps=10000")
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 1
    assert (
      out.strip()
      .splitlines()[-1]
      .startswith(f"error: --workdir {str(tmp_path)!r} is in use by process {first.pid}")
    ), out
  finally:
    first.kill()
    first.communicate()


def test_sigterm_during_setup_exits_within_seconds(tmp_path):
  run = _train_py(tmp_path, "--config.train.steps=10000")
  _wait_for(run, "attention kernels")  # then data checks, init and compile
  run.send_signal(signal.SIGTERM)
  begun = time.time()
  out, _ = run.communicate(timeout=60)
  assert time.time() - begun < 15, out
  assert (run.returncode == 128 + signal.SIGTERM and "SIGTERM during setup" in out) or (
    run.returncode == 0 and "SIGTERM: saved step" in out  # it had begun training
  ), out
  assert not (tmp_path / workdir.LOCK_FILE).exists()


def test_a_save_failing_in_the_background_stops_the_run_at_once(tmp_path):
  run = _train_py(tmp_path, "--config.train.steps=10000", "--config.checkpoint.every=2")
  ckpt = tmp_path / "checkpoints"
  deadline = time.time() + 300
  while not (ckpt / "2").is_dir():
    assert run.poll() is None and time.time() < deadline
    time.sleep(0.01)
  os.rename(ckpt, tmp_path / "moved")  # the directory vanishes and a file takes its place
  ckpt.write_text("")
  begun = time.time()
  out, _ = run.communicate(timeout=120)
  assert run.returncode == 1 and time.time() - begun < 60
  last = out.strip().splitlines()[-1]
  assert last.startswith("error: writing ") and f"to {ckpt} failed" in last, out[-3000:]
  assert "Traceback" not in out, out[-3000:]


def test_a_truncated_safetensors_file_is_named(tmp_path):
  import contextlib  # noqa: PLC0415

  from safetensors.numpy import save_file  # noqa: PLC0415

  from modeling.hf import loader  # noqa: PLC0415

  path = tmp_path / "model.safetensors"
  save_file({"w": np.ones((64, 64), np.float32)}, str(path))
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(ValueError, match=f"{path} is not a readable safetensors file"):
    with contextlib.ExitStack() as stack:
      loader._Checkpoint(tmp_path, stack).read("w")


@pytest.mark.parametrize(
  "field,value,needle",
  [
    ("train.seed", -1, "train.seed=-1 must be in [0, 2**32)"),
    ("train.eval_every", -5, "train.eval_every=-5 must be >= 0"),
    ("optim.b1", 1.5, "optim.b1=1.5 must be in [0, 1)"),
    ("optim.grad_clip", -1.0, "optim.grad_clip=-1.0 must be >= 0"),
    ("optim.lr", float("inf"), "optim.lr=inf must be a positive finite number"),
    ("checkpoint.keep", 0, "checkpoint.keep=0 must be >= 1"),
    ("checkpoint.every", -1, "checkpoint.every=-1 and checkpoint.keep_every=0 must be >= 0"),
    ("checkpoint.stop_timeout_s", -1.0, "checkpoint.stop_timeout_s=-1.0 must be a positive"),
    ("data.eos_token", "xyz", "data.eos_token='xyz' only applies to a tokenizer.json"),
    ("data.path", str(ROOT / "configs"), "is a directory without meta.json; give a glob"),
  ],
)
def test_out_of_range_settings_are_one_sentence_naming_the_field(field, value, needle):
  from trainer.checks import validate  # noqa: PLC0415

  config = family_config("llama3")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError) as e:
    validate(config)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_tuple_override_that_is_not_a_tuple_names_the_field():
  bad = subprocess.run(
    [sys.executable, "scripts/train.py", "--config", "configs/llama3.py:tiny", "--workdir",
     "/tmp/x", "--config.model.attention_pattern=global,local"],
    cwd=ROOT, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert bad.returncode == 1 and bad.stderr.startswith(
    "error: --config.model.attention_pattern='global,local' is not a valid tuple"
  ), bad.stderr
