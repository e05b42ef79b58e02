"""Shared tiny configs and helpers for the test suite."""

import importlib
import os
import pathlib
import sys

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
FAST_COMPILE = "--xla_backend_optimization_level=1"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = ("llama3", "qwen3", "gemma3", "olmo2", "smollm3", "mistral")


def family_config(family: str, preset: str = "tiny"):
  """An unlocked copy of a family preset, for tests to shrink or modify."""
  config = importlib.import_module(f"configs.{family}").get_config(preset)
  config.unlock()
  return config


def small_train_config(family: str = "llama3", **train):
  """A tiny preset cut down further so a few train steps take seconds on CPU."""
  config = family_config(family)
  config.model.embed_dim, config.model.mlp_dim = 64, 128
  config.model.num_layers = 2 if family != "gemma3" else 6
  if config.model.head_dim:
    config.model.head_dim = 16
  config.train.update(
    dict(steps=30, batch_size=4, seq_len=64, log_every=10, eval_batches=2), **train
  )
  config.optim.warmup_steps = 5
  config.precision.compute_dtype = "float32"
  config.logging.progress_bar = False
  return config


@pytest.fixture
def root():
  return ROOT
