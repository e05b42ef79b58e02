"""Benchmarks that print a ratio against a baseline measured in the same run.

  python scripts/bench.py moe [--config configs/deepseek_v3.py:tiny] [--steps 10]
  python scripts/bench.py optim [--config configs/qwen3.py:tiny] [--steps 10]
  python scripts/bench.py attention [--lengths 1024,2048,4096,8192] [--topk 256]
  python scripts/bench.py kernels [--tokens 4096] [--dtype bfloat16]   (on a GPU/TPU)
  python scripts/bench.py muonclip [--config configs/kimi_k2.py:tiny] [--steps 400] [--tau 50]

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
"""

import argparse
import importlib.util
import pathlib
import sys
import tempfile
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
    "opt": state_lib.init_opt(tx, params, mesh),
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
  """FLOPs of one chunk of the DeltaNet state pass, the loop XLA's cost analysis
  counts once (the chunk-local terms are built outside it): the bench adds it for
  the other chunks."""
  from pallas_kernels.chunked_delta import reference  # noqa: PLC0415

  h, c, dk, dv = cfg.num_v_heads, cfg.chunk, cfg.k_head_dim, cfg.v_head_dim
  z = lambda *shape: jax.numpy.zeros((1, h, *shape), jax.numpy.float32)
  return _flops(reference.state_pass, z(1, c, dk), z(1, c, dk), z(1, c, dv), z(1, c, dk),
                z(1, c, c), z(1, dk), z(dk, dv))  # fmt: skip


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


def _kernel_cases(tokens: int, dtype, interpret: bool):
  """(name, inputs, fn(implementation, *inputs) -> output, fwd + bwd FLOPs, cudnn) of each
  kernel; where `cudnn`, fn also takes implementation "cudnn" (jax.nn.dot_product_attention).
  FLOPs count the matmuls of the math (2 per multiply-add) over the visible pairs, not
  what a kernel recomputes: attention 7 matmuls (fwd QK, PV; bwd QK, dP, dV, dQ, dK)."""
  from modeling.attention import linear  # noqa: PLC0415
  from modeling.attention import sparse  # noqa: PLC0415
  from pallas_kernels.flash_attention import ops as flash_ops  # noqa: PLC0415
  from pallas_kernels.mla import ops as mla_ops  # noqa: PLC0415
  from pallas_kernels.sparse_attention import ops as sparse_ops  # noqa: PLC0415

  jnp = jax.numpy
  keys = iter(jax.random.split(jax.random.key(0), 32))
  normal = lambda *shape, dt=dtype: jax.random.normal(next(keys), shape, jnp.float32).astype(dt)
  b, s = 1, tokens
  seg = jnp.ones((b, s), jnp.int32)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  causal_pairs = s * (s + 1) / 2
  cases = []
  for h, kh, d, window in ((32, 8, 128, 0), (16, 8, 128, 1024)):  # Llama/Qwen3; Gemma 3 local
    pairs = window * s - window * (window - 1) / 2 if 0 < window < s else causal_pairs
    label = "causal" if not window else f"window {window}"
    cudnn_window = None if not window else (window - 1, 0)
    cases.append((
      f"flash attention {label}, {h} heads / {kh} kv, d {d}",
      (normal(b, s, h, d), normal(b, s, kh, d), normal(b, s, kh, d)),
      lambda impl, q, k, v, d=d, window=window, cw=cudnn_window: jax.nn.dot_product_attention(
        q, k, v, scale=d**-0.5, is_causal=True, local_window_size=cw, implementation="cudnn")
      if impl == "cudnn" else flash_ops.flash_attention(
        q, k, v, segment_ids=seg, scale=d**-0.5, window=window, implementation=impl,
        interpret=interpret)[0],
      7 * 2 * b * h * pairs * d,
      True,
    ))  # fmt: skip
  h, c, r = 16, 512, 64  # DeepSeek-V3's latent 512 + rope 64
  qk, pv = c + r, c  # widths of the QK-type matmuls (QK, dQ, dK) and PV-type (PV, dP, dV)
  cases.append((
    f"MLA latent, {h} heads, c {c} + rope {r}",
    (normal(b, s, h, c), normal(b, s, h, r), normal(b, s, c), normal(b, s, r)),
    lambda impl, ql, qp, ckv, kp: mla_ops.mla_attention(
      ql, qp, ckv, kp, segment_ids=seg, scale=(c + r) ** -0.5, implementation=impl,
      interpret=interpret)[0],
    2 * b * h * causal_pairs * (4 * qk + 3 * pv),
    False,
  ))  # fmt: skip
  topk = min(512, s // 2)
  scores = jnp.where(sparse.valid_keys(seg, 0), normal(b, s, s, dt=jnp.float32), sparse.NEG)
  indices = sparse.select(scores, topk)
  slots = float(jnp.sum(indices >= 0))  # filled slots: the pairs attended
  cases.append((
    f"sparse attention top-{topk}, {h} heads MQA, d {c + r} / dv {c}",
    (normal(b, s, h, c + r), normal(b, s, 1, c + r), normal(b, s, 1, c)),
    lambda impl, q, k, v: sparse_ops.sparse_attention(
      q, k, v, indices, scale=(c + r) ** -0.5, chunk=256, implementation=impl,
      interpret=interpret)[0],
    2 * h * slots * (4 * qk + 3 * pv),
    False,
  ))  # fmt: skip
  h, dk, chunk = 32, 128, 64  # Qwen3-Next's 32 value heads of 128 (key heads repeated)
  g = -jax.nn.softplus(normal(b, s, h, dt=jnp.float32))
  beta = jax.nn.sigmoid(normal(b, s, h, dt=jnp.float32))
  kernel_of = {"pallas": "pallas_interpret" if interpret else "pallas", "reference": "xla"}
  # per head and chunk, forward: k k^T, u = T v, w = T k, P = q k^T, P v_new (5 of c x c x d),
  # w S, q S, k^T v_new (3 of c x d x d); backward about twice the forward
  delta_flops = 3 * b * h * (s // chunk) * 2 * (5 * chunk * chunk * dk + 3 * chunk * dk * dk)
  cases.append((
    f"gated DeltaNet chunked (chunk {chunk}), {h} heads, dk = dv = {dk}",
    (unit(normal(b, s, h, dk, dt=jnp.float32)), unit(normal(b, s, h, dk, dt=jnp.float32)),
     normal(b, s, h, dk, dt=jnp.float32)),
    lambda impl, q, k, v: linear.chunked(q, k, v, g, beta, chunk=chunk, kernel=kernel_of[impl])[0],
    delta_flops,
    False,
  ))  # fmt: skip
  return cases


def bench_kernels(args):
  jnp = jax.numpy
  dtype = jnp.dtype(args.dtype)
  print(f"{jax.devices()[0].device_kind}; {args.tokens} tokens, batch 1, {args.dtype} inputs "
        f"(DeltaNet float32); forward + backward, median of {args.repeats}")  # fmt: skip
  print(f"  {'kernel':58s} {'ms xla':>8} {'ms pallas':>10} {'xla/pallas':>11} {'max rel diff':>13} "
        f"{'TFLOP/s':>8} {'ms cudnn':>9} {'cudnn/pallas':>13}")  # fmt: skip
  for name, inputs, fn, flops, has_cudnn in _kernel_cases(args.tokens, dtype, args.interpret):
    cot = jax.random.normal(
      jax.random.key(1), jax.eval_shape(lambda *xs: fn("reference", *xs), *inputs).shape
    )

    def loss(impl, *xs):
      out = fn(impl, *xs)
      return jnp.sum(out.astype(jnp.float32) * cot), out

    argnums = tuple(range(1, len(inputs) + 1))
    impls = ("reference", "pallas") + (("cudnn",) if has_cudnn and not args.interpret else ())
    results, times = {}, {}
    step = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True), static_argnums=0)
    try:
      for impl in ("reference", "pallas"):
        results[impl] = jax.block_until_ready(step(impl, *inputs))
    except Exception as error:  # noqa: BLE001 -- one kernel failing to lower is a result
      print(f"  {name:58s} FAILED ({impl}): {str(error).splitlines()[0][:300]}")
      continue
    for impl in impls:
      try:
        jax.block_until_ready(step(impl, *inputs))
      except Exception as error:  # noqa: BLE001 -- cuDNN missing or refusing the shape
        print(f"  ({impl}: {str(error).splitlines()[0][:200]})")
        continue
      runs = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(impl, *inputs))
        runs.append(time.perf_counter() - start)
      times[impl] = 1e3 * float(np.median(runs))
    want = jax.tree.leaves(results["reference"])
    got = jax.tree.leaves(results["pallas"])
    rel = max(
      float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
      / max(float(jnp.max(jnp.abs(y.astype(jnp.float32)))), 1e-30)
      for x, y in zip(got, want, strict=True)
    )
    ratio = times["reference"] / times["pallas"]
    tflops = f"{flops / times['pallas'] / 1e9:8.1f}" if flops else f"{'-':>8}"
    cudnn = (f"{times['cudnn']:9.2f} {times['cudnn'] / times['pallas']:12.2f}x" if "cudnn" in times
             else f"{'-':>9} {'-':>13}")  # fmt: skip
    print(f"  {name:58s} {times['reference']:8.2f} {times['pallas']:10.2f} {ratio:10.2f}x "
          f"{rel:13.2e} {tflops} {cudnn}")  # fmt: skip


def _clip_run(config, steps: int, stretch: int, label: str) -> dict:
  """Trains `steps` steps. Per step: the forward's max logit, the train loss and the
  max logit of the weights the step returns on the step's batch; the held-out
  loss every `stretch` steps."""
  from flax import nnx  # noqa: PLC0415
  from trainer.trainer import Trainer  # noqa: PLC0415

  with tempfile.TemporaryDirectory() as workdir:
    trainer = Trainer(config, workdir)

    @jax.jit
    def returned_max(params, model_state, batch):
      model = nnx.merge(trainer.graphdef, params, model_state)
      _, aux = model(
        batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"]
      )
      return aux["max_logits"].max()

    eval_data = data.eval_batches(
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
  config.logging.progress_bar = False
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
  args = parser.parse_args()
  benches = {"moe": bench_moe, "optim": bench_optim, "attention": bench_attention,
             "kernels": bench_kernels, "muonclip": bench_muonclip}  # fmt: skip
  benches[args.bench](args)


if __name__ == "__main__":
  main()
