"""Shared tiny configs and helpers for the test suite."""

import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import pytest

try:  # transformers is the parity reference; with 2 intra-op threads beside JAX, torch's
  import torch  # tiny matmuls run ~100x slower on this 2-core machine.

  torch.set_num_threads(1)
except ImportError:
  pass

# XLA CPU compiles for the suite: the tiny models compile for far longer than they
# run, and LLVM's optimisation passes are much of each compile. Level 1 ran the
# interpret-mode kernel tests 1.4x faster than the default; level 0 (2.7x) moved one
# HF parity case (qwen3_next, packed) from under 1e-4 to 1.25e-4, so not that far.
# Subprocess tests pass FAST_COMPILE on with their own flags.
# The fake-device runs' collectives: XLA:CPU aborts a program whose devices (threads)
# do not all reach a collective in time; asked for 2 minutes, for a loaded 2-core
# machine (the aborts CI saw were a deadlock instead: see fake_devices_env).
FAST_COMPILE = (
  "--xla_backend_optimization_level=1 --xla_cpu_collective_call_terminate_timeout_seconds=120"
)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

# JAX's persistent compilation cache, shared by the xdist workers and the subprocess
# tests (they inherit the environment): many tests build the same tiny model on the
# same mesh, and an executable read back from disk skips the whole XLA compile.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(tempfile.gettempdir()) / "jaxfrontier-test-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = ("llama3", "qwen3", "gemma3", "olmo2", "smollm3", "mistral")


def family_config(family: str, preset: str = "tiny"):
  """A family preset for tests to shrink or modify. It stays locked: values change,
  but a misspelt key (or one that moved to another section) is an error, not a
  new field nothing reads."""
  return importlib.import_module(f"configs.{family}").get_config(preset)


def small_train_config(family: str = "llama3", **train):
  """A tiny preset cut down further so a few train steps take seconds on CPU."""
  config = family_config(family)
  config.model.embed_dim, config.model.mlp_dim = 64, 128
  config.model.num_layers = {"gemma3": 6, "gemma3n": 6}.get(family, 2)
  if family == "gemma3n":  # 2 sparse layers, 2 storing K/V, 2 reusing them
    config.model.kv_shared_layers = 2
  if config.model.head_dim:
    config.model.head_dim = 16
  config.train.update(
    dict(steps=30, batch_size=4, seq_len=64, log_every=10, eval_batches=2), **train
  )
  config.optim.warmup_steps = 5
  config.precision.compute_dtype = "float32"
  config.logging.progress_bar = False
  return config


def random_module(cls, cfg, seed: int = 0, std: float = 0.5):
  """cls(cfg) with every Param ~ N(0, std) drawn by numpy (no per-shape RNG compiles)."""
  import jax  # noqa: PLC0415 - jax is imported after the XLA and cache settings above.
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  module = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)

  def fill(v):
    value = std * rng.standard_normal(v.shape) if isinstance(v, nnx.Param) else np.zeros(v.shape)
    return v.replace(jnp.asarray(value, v.dtype))

  state = jax.tree.map(fill, nnx.state(module), is_leaf=lambda v: isinstance(v, nnx.Variable))
  nnx.update(module, state)
  return module


@pytest.fixture
def root():
  return ROOT


_RUN = """
import json, sys
import jax, numpy as np
from flax import traverse_util
from tests.conftest import small_train_config
from trainer.trainer import Trainer
family, mesh, workdir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
overrides = json.loads(sys.argv[4])
config = small_train_config(family, steps=3, log_every=1, batch_size=8, **overrides["train"])
config.model.update(num_heads=4, num_kv_heads=2 if family == "llama3" else 4)
if family != "gemma3n":  # Gemma 3n keeps its 6: sparse, K/V-storing and K/V-reusing layers
  config.model.num_layers = 3
config.model.update(overrides["model"])
config.compute.update(overrides["compute"])
config.optim.warmup_steps = 1
config.mesh.update(mesh)
trainer = Trainer(config, workdir)
initial = jax.tree.map(lambda x: x.sharding, trainer.state)
trainer.run()
# A state laid out as the step returns it: the step compiles once.
same = lambda x, s: x.sharding.is_equivalent_to(s, x.ndim)
assert all(jax.tree.leaves(jax.tree.map(same, trainer.state, initial)))
flat = traverse_util.flatten_dict(jax.device_get(trainer.state["params"]))
np.savez(workdir + "/params.npz", **{"/".join(map(str, k)): v for k, v in flat.items()})
"""

MESHES = [  # (data, fsdp, tensor, expert)
  dict(data=8, fsdp=1, tensor=1, expert=1),
  dict(data=1, fsdp=8, tensor=1, expert=1),
  dict(data=1, fsdp=2, tensor=2, expert=2),
  dict(data=2, fsdp=1, tensor=1, expert=4),
]
SINGLE = dict(data=1, fsdp=1, tensor=1, expert=1)
CONTEXT = dict(data=2, fsdp=1, tensor=1, expert=1, context=4)  # the sequence split 4 ways
EXPERT_CONTEXT = dict(data=1, fsdp=2, tensor=1, expert=2, context=2)  # MoE, sequence split


def fake_devices_env(devices: int) -> dict:
  """The environment for a subprocess on `devices` fake CPU devices. With more than
  one it skips the persistent compilation cache: with jax 0.10.2 an XLA:CPU program
  with all-reduces that is read back from the cache deadlocks (llama3 on data=8,
  every time: the devices wait at different all-reduces until the rendezvous
  aborts, 2+ minutes in), where compiled afresh it runs in seconds."""
  flags = f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, XLA_FLAGS=flags)
  if devices > 1:
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  return env


def run_on_mesh(
  tmp_path, family: str, mesh: dict, devices: int, train=None, model=None, compute=None
) -> tuple[list[float], dict]:
  """3 train steps of a 3-layer `family` preset on `mesh` in a subprocess with
  `devices` fake CPU devices -> (losses, params by "/"-joined path); `train`,
  `model` and `compute` override those config sections."""
  workdir = tmp_path / (family + "-" + "-".join(f"{k}{v}" for k, v in mesh.items()))
  result = subprocess.run(
    [sys.executable, "-c", _RUN, family, json.dumps(mesh), str(workdir),
     json.dumps({"train": train or {}, "model": model or {}, "compute": compute or {}})],
    cwd=ROOT, env=fake_devices_env(devices), capture_output=True, text=True, timeout=400,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  params = dict(np.load(workdir / "params.npz"))
  return [r["loss"] for r in records if "loss" in r], params
