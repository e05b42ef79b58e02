"""Benchmarks that print a ratio against a baseline measured in the same run.

  python scripts/bench.py moe [--config configs/deepseek_v3.py:tiny] [--steps 10]
  python scripts/bench.py optim [--config configs/qwen3.py:tiny] [--steps 10]

`moe`: tokens/s of the full train step with dropless (sort + ragged_dot)
versus capacity-factor dispatch, same model, same batch, same process.
`optim`: step time of Muon (+ AdamW for embeddings, norms, ...) over AdamW
alone, same model, same batch, same process.
"""

import argparse
import importlib.util
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from parallelism.mesh import make_mesh  # noqa: E402
from trainer import data, optim, precision  # noqa: E402
from trainer import state as state_lib  # noqa: E402
from trainer.trainer import make_steps, mtp_weight_schedule  # noqa: E402


def load_config(spec: str):
  path, _, preset = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(preset) if preset else module.get_config()
  config.unlock()
  return config


def step_tokens_per_s(config, batch, steps: int) -> tuple[float, float]:
  """(tokens/s, compile seconds) of the jitted train step on one fixed batch."""
  model_cfg = precision.model_config(config)
  mesh = make_mesh(config.mesh)
  graphdef, params, model_state = state_lib.init(model_cfg, mesh, 0)
  state_dtype = precision.policy(config.precision).opt_state_dtype
  tx, lr = optim.make(
    config.optim, config.train.steps, state_lib.logical_axes(model_cfg), state_dtype
  )
  mtp_weight = mtp_weight_schedule(config.model.mtp, config.train.steps)
  train_step, _ = make_steps(graphdef, tx, lr, model_cfg, mtp_weight)
  state = {
    "step": np.int32(0),
    "params": params,
    "model_state": model_state,
    "opt": tx.init(params),
  }
  start = time.perf_counter()
  step = jax.jit(train_step, donate_argnums=0).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  tokens = batch["inputs"].size * steps
  return tokens / (time.perf_counter() - start), compile_s


def first_batch(config, spec: str, steps: int) -> dict:
  t = config.train
  ds = data.make_dataset(
    config.data, split="train", batch_size=t.batch_size, seq_len=t.seq_len, seed=0
  )
  print(
    f"{spec}: batch {t.batch_size} x {t.seq_len}, {steps} timed steps, "
    f"{jax.devices()[0].device_kind}"
  )
  return next(iter(ds))


def bench_moe(args):
  config = load_config(args.config)
  batch = first_batch(config, args.config, args.steps)
  results = {}
  for dispatch in ("dropless", "capacity"):
    config.model.moe.dispatch = dispatch
    results[dispatch], compile_s = step_tokens_per_s(config, batch, args.steps)
    print(f"  {dispatch:9s} {results[dispatch]:10.0f} tokens/s   (compile {compile_s:.1f}s)")
  ratio = results["dropless"] / results["capacity"]
  print(f"  dropless / capacity (factor {config.model.moe.capacity_factor}): {ratio:.2f}x")


def bench_optim(args):
  config = load_config(args.config)
  batch = first_batch(config, args.config, args.steps)
  results = {}
  for name in ("adamw", "muon"):
    config.optim.name = name
    results[name], compile_s = step_tokens_per_s(config, batch, args.steps)
    print(f"  {name:6s} {results[name]:10.0f} tokens/s   (compile {compile_s:.1f}s)")
  print(f"  step time muon / adamw: {results['adamw'] / results['muon']:.2f}x")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="bench", required=True)
  moe = sub.add_parser("moe", help="dropless vs capacity MoE dispatch")
  moe.add_argument("--config", default="configs/deepseek_v3.py:tiny")
  moe.add_argument("--steps", type=int, default=10)
  opt = sub.add_parser("optim", help="Muon vs AdamW step time")
  opt.add_argument("--config", default="configs/qwen3.py:tiny")
  opt.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  {"moe": bench_moe, "optim": bench_optim}[args.bench](args)


if __name__ == "__main__":
  main()
