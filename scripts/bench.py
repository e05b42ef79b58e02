"""Benchmarks that print a ratio against a baseline measured in the same run.

  python scripts/bench.py moe [--config configs/deepseek_v3.py:tiny] [--steps 10]
  python scripts/bench.py optim [--config configs/qwen3.py:tiny] [--steps 10]
  python scripts/bench.py attention [--lengths 1024,2048,4096,8192] [--topk 256]

`moe`: tokens/s of the full train step with dropless (sort + ragged_dot)
versus capacity-factor dispatch, same model, same batch, same process.
`optim`: step time of Muon (+ AdamW for embeddings, norms, ...) over AdamW
alone, same model, same batch, same process.
`attention`: one MLA layer's attention in latent space (MQA over [c_kv, k_pe]),
dense versus DeepSeek Sparse Attention (indexer scores + top-k + attention over
the selected keys) at each length: XLA's compiled FLOPs (cost analysis) and
the forward's time on this machine, with the sparse core and the indexer
apart, so their growth with length shows: the core's is linear at fixed
top-k, the indexer's quadratic with a small constant. A gated DeltaNet layer
of the same width runs beside them (linear in length).
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


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def _chunk_flops(cfg) -> float:
  """FLOPs of one chunk step of the DeltaNet scan, which XLA's cost analysis counts
  once per loop: the bench adds it for the other chunks."""
  from modeling.attention import linear  # noqa: PLC0415

  jnp = jax.numpy
  h, c, dk, dv = cfg.num_v_heads, cfg.chunk, cfg.k_head_dim, cfg.v_head_dim
  z = lambda *shape: jnp.zeros(shape, jnp.float32)
  carry = (z(1, h, dk, dv), jnp.zeros((1,), jnp.int32))
  xs = (z(1, h, c, dk), z(1, h, c, dk), z(1, h, c, dv), z(1, h, c), z(1, h, c),
        jnp.zeros((1, c), jnp.int32))  # fmt: skip
  return _flops(lambda carry, xs: linear._chunk(carry, xs, False), carry, xs)


def _attention_parts(topk: int):
  """An absorbed MLA layer with an indexer, sized so the cost split is visible:
  16 heads over a 128 + 32 latent, a 4 x 64 indexer."""
  from configs import deepseek_v32  # noqa: PLC0415
  from modeling.attention import mla, sparse  # noqa: PLC0415
  from modeling.config import decoder_config  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  config = deepseek_v32.get_config("tiny")
  with config.unlocked():
    config.model.update(embed_dim=256, num_heads=16, num_kv_heads=16)
    config.model.mla.update(q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=64,
                            qk_rope_head_dim=32, v_head_dim=64, absorbed=True)  # fmt: skip
    config.model.mla.indexer.update(num_heads=4, head_dim=64, topk=topk)
  cfg = decoder_config(config.model).blocks[0].attention
  layer = mla.MLA(cfg, rngs=nnx.Rngs(0))
  mla.SPARSE_CHUNK = 1 << 30  # no query loop: XLA's cost analysis counts a loop body once

  def qkv(x, positions):
    c_q, q_nope, q_pe = layer._query(x, positions)
    return (c_q, *layer._absorbed_qkv(q_nope, q_pe, *layer._latent(x, positions)))

  def dense(x, positions, segment_ids):
    _, q, k, v = qkv(x, positions)
    return layer._dense(q, k, v, segment_ids)[0]

  def indexer(x, positions, segment_ids):
    c_q = layer._query(x, positions)[0]
    scores = layer.indexer(x, c_q, positions, sparse.valid_keys(segment_ids))
    return sparse.select(scores, topk)

  def dsa(x, positions, segment_ids):
    c_q, q, k, v = qkv(x, positions)
    indices = sparse.select(layer.indexer(x, c_q, positions, sparse.valid_keys(segment_ids)), topk)
    return mla.sparse_ops.sparse_attention(
      q, k, v, indices, scale=cfg.scale, implementation="reference"
    )[0]

  # Gated DeltaNet at the same width: 16 value heads of 64 over 8 key heads of 64.
  from modeling.attention import linear  # noqa: PLC0415
  from modeling.config import DeltaNetConfig  # noqa: PLC0415

  delta_cfg = DeltaNetConfig(cfg.embed_dim, num_k_heads=8, num_v_heads=16, k_head_dim=64,
                             v_head_dim=64, chunk=64)  # fmt: skip
  delta_layer = linear.GatedDeltaNet(delta_cfg, rngs=nnx.Rngs(0))

  def deltanet(x, positions, segment_ids):
    return delta_layer(x, positions=positions, segment_ids=segment_ids)[0]

  parts = {"dense": dense, "dsa": dsa, "indexer": indexer, "deltanet": deltanet}
  return parts, cfg.embed_dim, _chunk_flops(delta_cfg), delta_cfg.chunk


def bench_attention(args):
  lengths = [int(n) for n in args.lengths.split(",")]
  parts, embed, chunk_flops, chunk = _attention_parts(args.topk)
  print(f"MLA layer, absorbed (16 heads, latent 128 + rope 32), DSA top-{args.topk}, "
        f"indexer 4 x 64; batch 1; {jax.devices()[0].device_kind}")  # fmt: skip
  print("  deltanet: a gated DeltaNet layer of the same width (16 x 64 value heads), chunk 64")
  print(f"  {'tokens':>6} {'GFLOP dense':>12} {'GFLOP dsa':>10} {'(indexer)':>10} {'deltanet':>9} "
        f"{'ms dense':>9} {'ms dsa':>8} {'ms delta':>9} {'dense/dsa time':>15}")  # fmt: skip
  previous = None
  for n in lengths:
    x = jax.random.normal(jax.random.key(0), (1, n, embed))
    positions = jax.numpy.arange(n)[None]
    segment_ids = jax.numpy.ones((1, n), jax.numpy.int32)
    row = {}
    for name, fn in parts.items():
      compiled = jax.jit(fn).lower(x, positions, segment_ids).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      jax.block_until_ready(compiled(x, positions, segment_ids))
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x, positions, segment_ids))
        times.append(time.perf_counter() - start)
      flops = cost["flops"]
      if name == "deltanet":  # the chunk loop's body is in `flops` once
        flops += (-(-n // chunk) - 1) * chunk_flops
      row[name] = (flops / 1e9, 1e3 * float(np.median(times)))
    (fd, td), (fs, ts), (fi, _), (fl, tl) = (
      row[k] for k in ("dense", "dsa", "indexer", "deltanet")
    )
    print(f"  {n:6d} {fd:12.2f} {fs:10.2f} {fi:10.2f} {fl:9.2f} {td:9.1f} {ts:8.1f} {tl:9.1f} "
          f"{td / ts:14.2f}x")  # fmt: skip
    if previous:
      (pd, ps, pi, pl_), grow = previous, lambda a, b: a / b
      print(f"  {'':6s} x{grow(fd, pd):11.2f} x{grow(fs, ps):9.2f} x{grow(fi, pi):9.2f} "
            f"x{grow(fl, pl_):8.2f}   (FLOP growth from {n // 2}; dsa without its indexer "
            f"x{grow(fs - fi, ps - pi):.2f})")  # fmt: skip
    previous = (fd, fs, fi, fl)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="bench", required=True)
  moe = sub.add_parser("moe", help="dropless vs capacity MoE dispatch")
  moe.add_argument("--config", default="configs/deepseek_v3.py:tiny")
  moe.add_argument("--steps", type=int, default=10)
  opt = sub.add_parser("optim", help="Muon vs AdamW step time")
  opt.add_argument("--config", default="configs/qwen3.py:tiny")
  opt.add_argument("--steps", type=int, default=10)
  att = sub.add_parser("attention", help="dense MLA vs DeepSeek Sparse Attention, by length")
  att.add_argument("--lengths", default="1024,2048,4096,8192")
  att.add_argument("--topk", type=int, default=256)
  att.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  {"moe": bench_moe, "optim": bench_optim, "attention": bench_attention}[args.bench](args)


if __name__ == "__main__":
  main()
