"""Fault injection: SIGKILL training runs at random points and prove nothing is lost.

Each trial trains a tiny preset (`dense`: llama3, `moe`: deepseek_v3 with MLA,
routed experts, the aux-free bias and MTP) for STEPS steps with a checkpoint
every 2 steps, and kills it with SIGKILL at a random point of one kind:

- step: while a step runs (a random step, checkpoints before it committed);
- save: while an asynchronous save is on disk but not committed;
- restore: first a kill in a step, then a kill of the resuming run while it
  restores and compiles.

After each kill every visible step directory must be complete (a half-written
step is never visible) and nothing may be moved aside as unreadable. The same
command then runs to the end, and its per-step losses must equal an
uninterrupted run's bit for bit. `tests/test_faults.py` runs a few trials,
`scripts/bench.py faults` as many as asked.
"""

import json
import pathlib
import random
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRESETS = {"dense": "configs/llama3.py:tiny", "moe": "configs/deepseek_v3.py:tiny"}
KINDS = ("step", "save", "restore")
STEPS = 16
# The tiny shapes of the fault and checkpoint runs.
SMALL = [
  "--config.model.num_layers=2",
  "--config.model.embed_dim=64",
  "--config.model.mlp_dim=128",
  "--config.train.batch_size=4",
  "--config.train.seq_len=64",
  "--config.train.log_every=1",
  "--config.train.eval_batches=1",
  "--config.optim.warmup_steps=2",
  "--config.precision.compute_dtype=float32",
  "--config.logging.progress_bar=False",
  "--config.logging.tensorboard=False",
]
ARGS = [f"--config.train.steps={STEPS}", "--config.checkpoint.every=2",
        "--config.checkpoint.keep=3", *SMALL]  # fmt: skip
# Files every committed step holds (one process).
COMPLETE = ("_CHECKPOINT_METADATA", "state/_METADATA", "data/process_0-of-1.json", "config")


def start(preset: str, workdir, env=None) -> subprocess.Popen:
  cmd = [sys.executable, "scripts/train.py", "--config", PRESETS[preset], "--workdir", str(workdir)]
  return subprocess.Popen(cmd + ARGS, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)  # fmt: skip


def finish(proc, timeout=900) -> str:
  out, _ = proc.communicate(timeout=timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"run failed (rc {proc.returncode}):\n{out[-3000:]}")
  return out


def losses(workdir) -> dict:
  """step -> loss; a step logged twice (before a kill and after resume) keeps the last.
  Only whole lines count: the run may be writing the last one right now."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  lines = path.read_text().split("\n")[:-1] if path.exists() else []
  return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def incomplete_steps(workdir) -> list[str]:
  """Visible step directories (a plain step number) missing a file of a committed step,
  and steps moved aside as unreadable."""
  ckpt = pathlib.Path(workdir) / "checkpoints"
  bad = []
  for p in ckpt.iterdir() if ckpt.is_dir() else ():
    if p.name.isdigit() and not all((p / f).exists() for f in COMPLETE):
      bad.append(p.name)
    if p.name.endswith(".unreadable"):
      bad.append(p.name)
  return bad


def _kill_when(proc, ready, timeout=600):
  deadline = time.time() + timeout
  while not ready():
    if proc.poll() is not None:
      return False  # ended first: the trial kills nothing this time
    if time.time() > deadline:
      raise TimeoutError("the run never reached the kill point")
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  return True


def _saving(workdir):
  ckpt = pathlib.Path(workdir) / "checkpoints"
  return lambda: ckpt.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir())


def trial(preset: str, kind: str, rng: random.Random, workdir, reference: dict, env=None) -> dict:
  """One kill (two for `restore`), then the resume to the end; the trial's record."""
  workdir = pathlib.Path(workdir)
  at = rng.randint(2, STEPS - 3)
  run = start(preset, workdir, env)
  if kind == "save":
    killed = _kill_when(run, _saving(workdir))
  else:
    killed = _kill_when(run, lambda: max(losses(workdir), default=0) >= at)
  bad, kills = incomplete_steps(workdir), int(killed)
  if kind == "restore" and killed:
    delay = rng.uniform(0.0, 4.0)
    resume = start(preset, workdir, env)
    begun = time.time()
    kills += _kill_when(resume, lambda: time.time() - begun >= delay)
    bad += incomplete_steps(workdir)
  finish(start(preset, workdir, env))
  got = losses(workdir)
  return {
    "preset": preset,
    "kind": kind,
    "kills": kills,
    "half_written_visible": len(bad),
    "steps_logged": len(got),
    "bit_identical": got == reference,
  }


def reference(preset: str, workdir, env=None) -> dict:
  finish(start(preset, workdir, env))
  return losses(workdir)


def run_trials(n: int, workroot, seed: int, presets=("dense", "moe"), env=None) -> list[dict]:
  """n trials cycling through presets and kinds (kill points random with `seed`)."""
  workroot = pathlib.Path(workroot)
  rng = random.Random(seed)
  refs = {p: reference(p, workroot / f"reference-{p}", env) for p in presets}
  records = []
  for i in range(n):
    preset, kind = presets[i % len(presets)], KINDS[i % len(KINDS)]
    rec = trial(preset, kind, rng, workroot / f"trial-{i}", refs[preset], env)
    records.append(rec)
    print(json.dumps(rec), flush=True)
  return records
