"""Benchmarks that print a ratio against a baseline measured in the same run.

  python scripts/bench.py moe [--config configs/deepseek_v3.py:tiny] [--steps 10]
  python scripts/bench.py optim [--config configs/qwen3.py:tiny] [--steps 10]
  python scripts/bench.py attention [--lengths 1024,2048,4096,8192] [--topk 256]
  python scripts/bench.py kernels [--tokens 4096] [--dtype bfloat16]   (on a GPU/TPU)
  python scripts/bench.py muonclip [--config configs/kimi_k2.py:tiny] [--steps 400] [--tau 50]
  python scripts/bench.py dispatch [--config configs/llama3.py:tiny] [--steps 10] [--dtype bfloat16]
  python scripts/bench.py flops [--families llama3,deepseek_v3] [--steps 3]
  python scripts/bench.py mfu [--steps 30] [--batch 4] [--remat save_dots]   (on a GPU)
  python scripts/bench.py decode [--config configs/llama3.py:tiny] [--batch 8] [--new_tokens 64]
  python scripts/bench.py data [--config configs/llama3.py:tiny] [--mb 32] [--vocab 32000]

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
`kernels`: each Pallas kernel against its XLA reference on this device, forward
plus backward, same inputs, same process: median time of each, the ratio, and
the largest difference of outputs and gradients relative to the reference's
largest value (flash attention GQA causal, MLA in latent space, sparse
attention over top-k slots, the chunked DeltaNet with its state-pass kernel);
each kernel's TFLOP/s (the math's matmul FLOPs over the visible pairs), and for
flash attention the time of jax.nn.dot_product_attention(implementation=
"cudnn") on the same inputs.
`muonclip`: MuonClip's stability demo. The same model trains on the same
batches with Muon at a high learning rate (WSD: held, then decayed over the
last 20%), without QK-clip and with it (each `--measure`): each step's largest
attention logit (the forward's, a fresh batch before the clip) and that of the
weights the step returns, by a second forward on the step's batch; train loss
by stretch and the held-out loss after each; the clipped runs' peak logit over
the unclipped run's.
`flops`: every family's tiny preset (layers unrolled, remat off): XLA's compiled
FLOPs of one train step over the analytic count (6 x active matmul params x
tokens + attention, trainer/metrics.py), the bytes it accesses and its tokens/s.
`mfu`: on one GPU, tokens/s and MFU (against the device's peak in
trainer/metrics.py) of llama3:1b and deepseek_v3:small at 4096 tokens per
sequence in bfloat16 (float32 params and optimizer state), with the remat policy,
the layer layout and the attention kernels chosen; on a CPU the tiny presets.
`dispatch`: the train step with `compute.attention_kernel=auto` (what the kernel
dispatch picks on this device, printed per attention kind) against `xla`, same
model, same batch, same process: tokens/s of each, the ratio, and how far the
first step's loss moved (on CPU auto is XLA: ratio ~1, loss equal).
`decode`, `data`: decode vs HF generate, the loader vs the step (benchmarks/decode.py, loader.py).
"""

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import attention, decode, kernels, loader, moe_twin  # noqa: E402
from modeling.moe.config import MATMULS  # noqa: E402
from parallelism.mesh import make_mesh  # noqa: E402
from trainer import cli, pipeline, step  # noqa: E402

OVERRIDES = []  # the command line's --config.a.b=value, applied to every config loaded


def load_config(spec: str):
  return cli.load_config(spec, OVERRIDES)


def step_tokens_per_s(config, batch, steps: int, out: dict | None = None) -> tuple[float, float]:
  """(tokens/s, compile seconds) of the run's train step (trainer/step.py, the one
  train.py runs) on one fixed batch; `out` gets the program and the first step's
  loss."""
  program = step.build(config, make_mesh(config.mesh))
  state = program.init_state(seed=0)
  batch = jax.device_put(batch, program.batch_sharding)
  start = time.perf_counter()
  train_step = program.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  if out is not None:
    out["compiled"] = train_step
  state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  if out is not None:
    out.update(program=program, loss=float(metrics["loss"]))
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  tokens = batch["inputs"].size * steps
  return tokens / (time.perf_counter() - start), compile_s


def train_batch(config) -> dict:
  """The run's first training batch (the default corpus unless config.data says)."""
  t = config.train
  ds = pipeline.make_dataset(
    config.data, split="train", batch_size=t.batch_size, seq_len=t.seq_len, seed=0
  )
  return next(iter(ds))


def first_batch(config, spec: str, steps: int) -> dict:
  t = config.train
  print(
    f"{spec}: batch {t.batch_size} x {t.seq_len}, {steps} timed steps, "
    f"{jax.devices()[0].device_kind}"
  )
  return train_batch(config)


def bench_moe(args):
  """Dropless by each grouped matmul, capacity, and the dense twin, one batch."""
  config = load_config(args.config)
  batch = first_batch(config, args.config, args.steps)
  runs = [(f"dropless ({m})", dict(moe_dispatch="dropless", moe_matmul=m)) for m in MATMULS]
  runs.append(("capacity", dict(moe_dispatch="capacity")))
  results = {}
  for name, compute in runs:
    case = moe_twin.copy_config(config)
    case.compute.update(compute)
    results[name], compile_s = step_tokens_per_s(case, batch, args.steps)
    print(f"  {name:22s} {results[name]:10.0f} tokens/s   (compile {compile_s:.1f}s)")
  dense, compile_s = step_tokens_per_s(moe_twin.dense_twin(config), batch, args.steps)
  print(f"  {'dense, equal active':22s} {dense:10.0f} tokens/s   (compile {compile_s:.1f}s)")
  factor = config.compute.moe_capacity_factor
  for name in results:
    if name != "capacity":
      print(f"  step time {name} / capacity (factor {factor}): "
            f"{results['capacity'] / results[name]:.2f}x")  # fmt: skip
  for name in results:
    print(f"  step time {name} / dense twin: {dense / results[name]:.2f}x")


def bench_optim(args):
  config = load_config(args.config)
  batch = first_batch(config, args.config, args.steps)
  results = {}
  for name in ("adamw", "muon"):
    config.optim.name = name
    results[name], compile_s = step_tokens_per_s(config, batch, args.steps)
    print(f"  {name:6s} {results[name]:10.0f} tokens/s   (compile {compile_s:.1f}s)")
  print(f"  step time muon / adamw: {results['adamw'] / results['muon']:.2f}x")


def bench_flops(args):
  from trainer.metrics import train_flops_per_token  # noqa: PLC0415

  configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
  paths = sorted(p for p in configs.glob("*.py") if p.stem not in NOT_FAMILIES)
  print(f"tiny presets, layers unrolled, remat off, {args.steps} timed steps, "
        f"{jax.devices()[0].device_kind}; analytic = 6 x active matmul params x tokens + "
        "attention (trainer/metrics.py)")  # fmt: skip
  print(f"  {'family':12s} {'compiled GF':>11s} {'analytic GF':>11s} {'ratio':>6s} "
        f"{'GB accessed':>11s} {'tokens/s':>9s} {'MoE/dense':>9s}")  # fmt: skip
  for path in paths:
    if args.families and path.stem not in args.families.split(","):
      continue
    config = load_config(f"{path}:tiny")
    config.compute.update(scan_layers="unroll", remat="none")
    t, out = config.train, {}
    batch = train_batch(config)
    tokens_per_s, _ = step_tokens_per_s(config, batch, args.steps, out)
    cost = out["compiled"].cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analytic = train_flops_per_token(out["program"].model_cfg, t.seq_len) * batch["inputs"].size
    ratio = cost["flops"] / analytic
    note = "over 1.15: see benchmarks/results/flops_cpu.txt" if ratio > 1.15 else ""
    versus = ""  # MoE: step time over the dense twin's (equal active params)
    if "moe" in config.model.ffn_pattern:
      versus = f"{step_tokens_per_s(moe_twin.dense_twin(config), batch, args.steps)[0] / tokens_per_s:9.2f}"
    print(f"  {path.stem:12s} {cost['flops'] / 1e9:11.2f} {analytic / 1e9:11.2f} {ratio:6.2f} "
          f"{cost['bytes accessed'] / 1e9:11.2f} {tokens_per_s:9.0f} {versus:>9s}  {note}")  # fmt: skip


def bench_mfu(args):
  """Tokens/s and MFU of the train step on one device: a Llama-3-1B-class dense model
  and a DeepSeek-V3-style MoE at seq 4096 in bfloat16 (--tiny, the default on a CPU:
  the tiny presets at seq 256, float32)."""
  from modeling.attention import kernels as dispatch  # noqa: PLC0415
  from trainer import precision  # noqa: PLC0415
  from trainer.metrics import mfu_text, peak_flops, train_flops_per_token  # noqa: PLC0415

  tiny = args.tiny or jax.default_backend() == "cpu"
  peak = peak_flops()
  print(f"{jax.devices()[0].device_kind}: peak {peak / 1e12:.3g} TFLOP/s, {args.steps} timed steps")
  for name, spec in MFU_MODELS:
    spec = spec.split(":")[0] + ":tiny" if tiny else spec
    config = load_config(spec)
    t = config.train
    if not tiny:
      config.precision.update(param_dtype="float32", compute_dtype="bfloat16")
      config.compute.remat = args.remat
      t.update(batch_size=args.batch, seq_len=4096)
    out = {}
    tokens_per_s, compile_s = step_tokens_per_s(config, train_batch(config), args.steps, out)
    cfg, scan = out["program"].model_cfg, precision.scan_layers(config)[0]
    mfu = tokens_per_s * train_flops_per_token(cfg, t.seq_len) / peak
    print(f"  {name:5s} {spec:28s} batch {t.batch_size} x "
          f"{t.seq_len} {config.precision.compute_dtype}: {tokens_per_s:9.0f} tokens/s  MFU "
          f"{mfu_text(mfu):>6s}  (compile {compile_s:.0f}s; remat {config.compute.remat}; layers "
          f"{'scanned' if scan else 'unrolled'}; {dispatch.describe(cfg.blocks)})")  # fmt: skip


MFU_MODELS = [("dense", "configs/llama3.py:1b"), ("moe", "configs/deepseek_v3.py:small")]
NOT_FAMILIES = ("__init__", "base", "moved")


def bench_dispatch(args):
  from modeling.attention import kernels  # noqa: PLC0415

  config = load_config(args.config)
  config.precision.compute_dtype = args.dtype
  batch = first_batch(config, args.config, args.steps)
  results, first = {}, {}
  for kernel in ("xla", "auto"):
    config.compute.attention_kernel = kernel
    first[kernel] = {}
    results[kernel], compile_s = step_tokens_per_s(config, batch, args.steps, first[kernel])
    chosen = kernels.describe(first[kernel]["program"].model_cfg.blocks)
    print(f"  {kernel:5s} {results[kernel]:10.0f} tokens/s   (compile {compile_s:.1f}s)  {chosen}")
  drift = abs(first["auto"]["loss"] - first["xla"]["loss"])
  losses = f"{first['xla']['loss']:.5f} (xla) vs {first['auto']['loss']:.5f} (auto)"
  print(f"  auto / xla: {results['auto'] / results['xla']:.2f}x; first-step loss {losses}, "
        f"|diff| {drift:.2e}")  # fmt: skip


def _clip_run(config, steps: int, stretch: int, label: str) -> dict:
  """Trains `steps` steps. Per step: the forward's max logit, the train loss and the
  max logit of the weights the step returns on the step's batch; the held-out
  loss every `stretch` steps."""
  from flax import nnx  # noqa: PLC0415

  from trainer.step import max_logit  # noqa: PLC0415
  from trainer.trainer import Trainer  # noqa: PLC0415

  with tempfile.TemporaryDirectory() as workdir:
    trainer = Trainer(config, workdir)

    @jax.jit
    def returned_max(params, model_state, batch):
      model = nnx.merge(trainer.graphdef, params, model_state)
      _, aux = model(
        batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"]
      )
      return max_logit(aux)

    eval_data = pipeline.eval_batches(
      config.data, batch_size=config.train.batch_size, seq_len=config.train.seq_len,
      max_batches=config.train.eval_batches,
    )  # fmt: skip
    out = {"forward": [], "returned": [], "loss": [], "eval": []}
    start = time.perf_counter()
    for step in range(1, steps + 1):
      batch = trainer.put(next(trainer.data_iter))
      trainer.state, metrics = trainer._train_step(trainer.state, batch)
      out["forward"].append(metrics["max_logit"])  # device scalars: no sync per step
      out["loss"].append(metrics["loss"])
      params, model_state = trainer.state["params"], trainer.state["model_state"]
      out["returned"].append(returned_max(params, model_state, batch))
      if step % stretch == 0 or step == steps:
        out["eval"].append(trainer.evaluate(eval_data))
        print(f"    {label:16s} step {step:4d}  held-out loss {out['eval'][-1]:.4f}  "
              f"{time.perf_counter() - start:6.0f}s", flush=True)  # fmt: skip
  return {k: np.asarray(jax.device_get(v), np.float64) for k, v in out.items()}


def bench_muonclip(args):
  config = load_config(args.config)
  config.optim.update(
    name="muon", lr=args.lr, schedule=args.schedule, warmup_steps=args.warmup
  )  # fmt: skip
  config.train.update(steps=args.steps, log_every=args.steps, eval_every=0)
  config.checkpoint.every = 0
  config.logging.update(progress_bar=False, max_logit=True)  # the no-clip run's too
  t, o = config.train, config.optim
  print(
    f"{args.config}: Muon lr {o.lr} ({o.schedule}, warmup {o.warmup_steps}, wsd decay "
    f"{o.decay_fraction}), batch {t.batch_size} x {t.seq_len}, {args.steps} steps, tau "
    f"{args.tau}, held-out loss on {t.eval_batches} batches, {jax.devices()[0].device_kind}"
  )
  runs = {}
  for measure in ["none", *args.measure.split(",")]:
    config.optim.update(
      qk_clip_tau=0.0 if measure == "none" else args.tau,
      qk_clip_measure="forward" if measure == "none" else measure,
    )  # fmt: skip
    label = "no clip" if measure == "none" else f"clip ({measure})"
    runs[label] = _clip_run(config, args.steps, args.stretch, label)
  if args.out:
    flat = {f"{label}/{k}": v for label, run in runs.items() for k, v in run.items()}
    np.savez(args.out, **flat)
  k = args.stretch
  print("  max logit: the forward's (a fresh batch, before the clip) / the returned")
  print("  weights' on the step's batch; train loss (mean); held-out loss after the stretch:")
  print(f"  {'steps':>9s}" + "".join(f"   {label:>28s}" for label in runs))
  for a in range(0, args.steps, k):
    s, row = slice(a, a + k), f"  {a + 1:4d}-{min(a + k, args.steps):<4d}"
    for i, run in enumerate(runs.values()):
      row += (f"   {run['forward'][s].max():6.1f} /{run['returned'][s].max():6.2f} "
              f"{run['loss'][s].mean():6.3f} {run['eval'][a // k]:6.3f}")  # fmt: skip
    print(row)
  free = runs["no clip"]
  over = free["forward"] > args.tau
  first = int(np.argmax(over)) + 1 if over.any() else None
  print(f"  no clip: max logit passes tau {args.tau} at step {first}, peaks at "
        f"{free['forward'].max():.1f}; held-out loss {free['eval'][-1]:.4f}")  # fmt: skip
  for label, run in list(runs.items())[1:]:
    print(f"  {label}: returned weights' max logit on their batch <= "
          f"{run['returned'].max():.2f} ({run['returned'].max() / args.tau - 1:+.1%} of tau); "
          f"the forward's passes tau on {int((run['forward'] > args.tau).sum())} of "
          f"{args.steps} steps, peak {run['forward'].max():.1f}; held-out loss "
          f"{run['eval'][-1]:.4f}; peak max logit / no clip's: "
          f"{run['forward'].max() / free['forward'].max():.2f}x")  # fmt: skip


def bench_faults(args):
  """Kill trials (benchmarks/faults.py) and their totals."""
  import tempfile  # noqa: PLC0415

  from benchmarks import faults  # noqa: PLC0415

  root = args.workdir or tempfile.mkdtemp(prefix="jaxfrontier-faults-")
  records = faults.run_trials(args.trials, root, args.seed)
  kills = sum(r["kills"] for r in records)
  print(f"trials {len(records)}, SIGKILLs {kills}; resumed bit-identical "
        f"{sum(r['bit_identical'] for r in records)}/{len(records)}; half-written steps "
        f"visible {sum(r['half_written_visible'] for r in records)}; runs in {root}")  # fmt: skip


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
  ker = sub.add_parser("kernels", help="each Pallas kernel vs its XLA reference, fwd + bwd")
  ker.add_argument("--tokens", type=int, default=4096)
  ker.add_argument("--dtype", default="bfloat16")
  ker.add_argument("--repeats", type=int, default=10)
  ker.add_argument("--interpret", action="store_true", help="Pallas interpret mode (CPU check)")
  clip = sub.add_parser("muonclip", help="Muon at a high lr without vs with QK-clip")
  clip.add_argument("--config", default="configs/kimi_k2.py:tiny")
  clip.add_argument("--steps", type=int, default=400)
  clip.add_argument("--lr", type=float, default=2e-2)
  clip.add_argument("--schedule", default="wsd")
  clip.add_argument("--warmup", type=int, default=20)
  clip.add_argument("--tau", type=float, default=50.0)
  clip.add_argument(
    "--measure", default="forward,updated", help="optim.qk_clip_measure of each clipped run"
  )
  clip.add_argument("--stretch", type=int, default=50, help="steps per table row and eval")
  clip.add_argument("--out", default="", help="also save the per-step arrays here (.npz)")
  disp = sub.add_parser("dispatch", help="compute.attention_kernel auto vs xla, train step")
  disp.add_argument("--config", default="configs/llama3.py:tiny")
  disp.add_argument("--steps", type=int, default=10)
  disp.add_argument("--dtype", default="bfloat16", help="precision.compute_dtype (cuDNN: bf16)")
  fl = sub.add_parser("flops", help="every family's tiny step: compiled / analytic FLOPs")
  fl.add_argument("--steps", type=int, default=3)
  fl.add_argument("--families", default="", help="comma-separated config stems (default all)")
  mfu = sub.add_parser("mfu", help="tokens/s and MFU, 1B dense and small MoE at seq 4096")
  mfu.add_argument("--steps", type=int, default=30)
  mfu.add_argument("--batch", type=int, default=4, help="sequences of 4096 per step")
  mfu.add_argument("--remat", default="save_dots", help="compute.remat of both models")
  mfu.add_argument("--tiny", action="store_true", help="tiny presets at seq 256 (CPU default)")
  flt = sub.add_parser("faults", help="SIGKILL runs at random points; resumes bit-identical?")
  flt.add_argument("--trials", type=int, default=20)
  flt.add_argument("--seed", type=int, default=0)
  flt.add_argument("--workdir", default="", help="where the runs go (default: a temp dir)")
  for module in (decode, loader):  # benchmarks/*.py with their own flags
    module.add_parser(sub)
  args, rest = parser.parse_known_args()
  OVERRIDES.extend(a for a in rest if a.startswith("--config.") and "=" in a)
  if len(OVERRIDES) != len(rest):
    parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in OVERRIDES)}")
  benches = {"decode": decode.bench, "moe": bench_moe, "optim": bench_optim, "flops": bench_flops,
             "attention": attention.bench, "kernels": kernels.bench, "mfu": bench_mfu,
             "muonclip": bench_muonclip, "dispatch": bench_dispatch, "faults": bench_faults,
             "data": loader.bench}  # fmt: skip
  benches[args.bench](args)


if __name__ == "__main__":
  main()
