"""`scripts/bench.py decode`: greedy decode tokens/s of our generation against
Hugging Face `generate` on the same weights, in the same process.

The preset's model (random init, float32) is exported with `modeling.hf.export`
and loaded by `transformers`; both decode the same batch of prompts greedily for
the same number of new tokens with their caches (ours: one prefill, then bursts
of decode steps in a device loop; each side runs once untimed first, so compiles
and warm-ups are not counted). Tokens/s counts new tokens of the whole batch; the
tokens both produce must be equal, which the output says. A third line times the
model's weight matmuls alone (every torch Linear layer on a [batch, in] input,
once per new token; no attention, cache or sampling): at small batches decoding
is bound by reading the weights, so that rate over HF's is the most any
implementation of these matmuls could gain on HF. Needs `torch` and
`transformers` (the test extra).
"""

import tempfile
import time

import jax
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
  tokens = args.batch * new
  print(f"{args.config}: batch {args.batch}, prompt {args.prompt}, {new} new tokens, greedy, "
        f"float32, {jax.devices()[0].device_kind}, best of {args.repeats}")  # fmt: skip
  print(f"  ours      {tokens / ours_s:10.1f} tokens/s ({ours_s:.3f} s)")
  print(f"  HF        {tokens / hf_s:10.1f} tokens/s ({hf_s:.3f} s)")
  print(f"  matmuls   {tokens / floor_s:10.1f} tokens/s ({floor_s:.3f} s; the weights' "
        f"matmuls alone, at most {hf_s / floor_s:.2f}x HF)")  # fmt: skip
  print(f"  ours / HF {hf_s / ours_s:10.2f}x; same tokens: {ours == theirs}")
