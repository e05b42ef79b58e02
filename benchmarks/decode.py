"""`scripts/bench.py decode`: greedy decode tokens/s of our generation against
Hugging Face `generate` on the same weights, in the same process.

The preset's model (random init, float32) is exported with `modeling.hf.export`
and loaded by `transformers`; both decode the same batch of prompts greedily for
the same number of new tokens with their caches (ours: one prefill, then bursts
of decode steps in a device loop; each side runs once untimed first, so compiles
and warm-ups are not counted). Tokens/s counts new tokens of the whole batch; the
tokens both produce must be equal, which the output says. Two more lines time the
model's weight matmuls alone, every Linear layer's [batch, in] x [in, out] once
per new token with no attention, cache or sampling: in torch (each layer called
in turn) and in XLA (the same shapes chained in one jitted device loop, as our
decode runs them). At small batches those matmuls are most of a decode step, so
their rate over HF's bounds what a decoder built on them can gain on HF. Needs
`torch` and `transformers` (the test extra).
"""

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def add_parser(sub):
  dec = sub.add_parser("decode", help="greedy decode tokens/s vs Hugging Face generate")
  dec.add_argument("--config", default="configs/llama3.py:tiny")
  for flag, default in (("batch", 8), ("prompt", 16), ("new_tokens", 64), ("repeats", 3)):
    dec.add_argument(f"--{flag}", type=int, default=default)


def _timed(fn, repeats: int) -> tuple[float, object]:
  fn()  # compile / warm up
  best, out = float("inf"), None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - start)
  return best, out


def _xla_matmuls(shapes: list[tuple[int, int]], batch: int, steps: int):
  """A function that runs `steps` rounds of [batch, in] x [in, out] for every shape
  in turn, in one jitted device loop; each input depends on the last product, so
  nothing is hoisted out of the loop."""
  rng = np.random.default_rng(0)
  ws = [jnp.asarray(rng.standard_normal((i, o), np.float32) * 0.02) for i, o in shapes]
  xs = [jnp.ones((batch, i), jnp.float32) for i, _ in shapes]

  @jax.jit
  def run(ws, xs):
    def step(_, carry):
      for x, w in zip(xs, ws):
        carry = carry + 1e-9 * jnp.sum(jnp.dot(x + carry, w))
      return carry

    return jax.lax.fori_loop(0, steps, step, jnp.float32(0))

  return lambda: jax.block_until_ready(run(ws, xs))


def bench(args):
  try:
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415
  except ImportError:
    raise SystemExit("bench decode needs torch and transformers: pip install -e '.[test]'")
  from modeling import generate  # noqa: PLC0415
  from modeling.decoder import Decoder  # noqa: PLC0415
  from modeling.hf import export  # noqa: PLC0415
  from scripts.bench import load_config  # noqa: PLC0415
  from trainer import precision  # noqa: PLC0415

  config = load_config(args.config)
  config.precision.compute_dtype = "float32"
  model = Decoder(precision.model_config(config), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  prompts = rng.integers(0, config.model.vocab_size, (args.batch, args.prompt)).tolist()
  new = args.new_tokens
  ours_s, ours = _timed(lambda: generate.generate(model, prompts, new), args.repeats)
  with tempfile.TemporaryDirectory() as directory:
    export.save(model, config.model, directory)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval().float()
  torch.set_num_threads(max(1, torch.get_num_threads()))
  ids = torch.tensor(prompts)

  def hf_generate():
    with torch.no_grad():
      out = hf_model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
        do_sample=False, pad_token_id=0,
      )  # fmt: skip
    return out[:, args.prompt :].tolist()

  hf_s, theirs = _timed(hf_generate, args.repeats)
  linears = [m for m in hf_model.modules() if isinstance(m, torch.nn.Linear)]
  inputs = [torch.randn(args.batch, m.in_features) for m in linears]

  def matmuls_only():
    with torch.no_grad():
      for _ in range(new):
        for m, x in zip(linears, inputs):
          m(x)

  floor_s, _ = _timed(matmuls_only, args.repeats)
  shapes = [(m.in_features, m.out_features) for m in linears]
  xla_s, _ = _timed(_xla_matmuls(shapes, args.batch, new), args.repeats)
  tokens = args.batch * new
  print(f"{args.config}: batch {args.batch}, prompt {args.prompt}, {new} new tokens, greedy, "
        f"float32, {jax.devices()[0].device_kind}, best of {args.repeats}")  # fmt: skip
  print(f"  ours      {tokens / ours_s:10.1f} tokens/s ({ours_s:.3f} s)")
  print(f"  HF        {tokens / hf_s:10.1f} tokens/s ({hf_s:.3f} s)")
  for name, s in (("torch", floor_s), ("XLA", xla_s)):
    print(f"  {name:5s} mm  {tokens / s:10.1f} tokens/s ({s:.3f} s; the weights' matmuls alone "
          f"in {name}: {hf_s / s:.2f}x HF)")  # fmt: skip
  print(f"  ours / HF {hf_s / ours_s:10.2f}x; same tokens: {ours == theirs}")
