"""Specs for modeling/generate.py and the attention caches (modeling/attention/cache.py).

Prefill + one-token decode steps give the full forward's logits at every
position (float32, random weights) for every family's tiny preset (softmax
GQA, MLA, DSA, DeltaNet, KDA, lightning), with windows and chunks shorter than
the sequence so the ring buffers wrap, scanned and unrolled; greedy decoding of a batch of prompts of different lengths gives
Hugging Face `generate`'s tokens."""

import numpy as np
import pytest

from tests.conftest import family_config, random_module

# Every family, and which of its windowed fields to shrink below the test's 40 tokens.
FAMILIES = (
  "llama3", "qwen3", "gemma3", "gemma3n", "olmo2", "olmo3", "smollm3", "qwen2", "mistral",
  "mixtral", "gpt_oss", "llama4", "glm4_moe", "minimax_m2", "qwen3_moe", "qwen2_moe", "grok2",
  "deepseek_v3", "kimi_k2", "deepseek_v32", "glm5", "qwen3_next", "kimi_linear", "minimax01",
)  # fmt: skip
SEQ = 40
LENGTHS = (13, 6)  # the prompts: the first tokens of each row


def _model(family: str, layers: int | None = None, scan: str = "auto", topk: int = 8):
  import jax.numpy as jnp  # noqa: PLC0415

  from modeling.decoder import Decoder  # noqa: PLC0415
  from trainer import precision  # noqa: PLC0415

  config = family_config(family)
  for field in ("sliding_window", "attention_chunk"):
    if config.model.get(field):
      config.model[field] = 8
  if config.model.mla.indexer.num_heads:  # DSA: each query keeps 8 of up to 40 keys
    config.model.mla.indexer.topk = topk
  if layers:
    config.model.num_layers = layers
  config.compute.scan_layers = scan
  config.precision.compute_dtype = "float32"
  cfg = precision.model_config(config)
  assert cfg.compute_dtype == jnp.float32
  return random_module(Decoder, cfg, std=0.1)


def _max_error(model) -> tuple[float, float]:
  """Teacher-forced prefill + decode against the full forward: (max |logit diff|,
  max |logit|) over every decoded position of both rows."""
  import jax.numpy as jnp  # noqa: PLC0415

  from modeling import generate  # noqa: PLC0415

  rng = np.random.default_rng(0)
  tokens = rng.integers(0, model.cfg.vocab_size, (2, SEQ)).astype(np.int32)
  full = np.asarray(model(jnp.asarray(tokens), mtp=False)[0])
  lengths = np.array(LENGTHS, np.int32)
  prompts = np.where(np.arange(16)[None] < lengths[:, None], tokens[:, :16], 0)
  logits, caches = generate.prefill(model, jnp.asarray(prompts), jnp.asarray(lengths), cache_len=64)
  rows = np.arange(2)
  errors = [np.abs(np.asarray(logits) - full[rows, lengths - 1]).max()]
  positions = lengths.copy()
  for _ in range(SEQ - max(LENGTHS)):
    new = tokens[rows, positions]
    logits, caches = generate.decode(model, caches, jnp.asarray(new), jnp.asarray(positions))
    errors.append(np.abs(np.asarray(logits) - full[rows, positions]).max())
    positions += 1
  return float(max(errors)), float(np.abs(full).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_and_decode_equal_the_full_forward(family):
  error, scale = _max_error(_model(family))
  assert error <= 1e-4 * max(1.0, scale), (family, error, scale)


def test_dsa_decode_is_sparse():
  """The DSA case above selects: its logits with top-8 differ from dense ones."""
  import jax.numpy as jnp  # noqa: PLC0415

  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 384, (2, SEQ)), jnp.int32)
  sparse = _model("deepseek_v32")(tokens, mtp=False)[0]
  dense = _model("deepseek_v32", topk=SEQ)(tokens, mtp=False)[0]
  assert float(jnp.abs(sparse - dense).max()) > 1e-3


@pytest.mark.parametrize(
  "family,layers", [("gemma3", 13), ("llama4", 8), ("qwen3_next", 8), ("minimax01", 8)]
)
def test_scanned_layers_decode_with_stacked_caches(family, layers):
  """Gemma 3: 2 scanned periods of 5 ring buffers + 1 global cache, then a tail
  layer; Llama 4: chunked ring buffers and a global layer per period; Qwen3-Next:
  DeltaNet states and conv rows; MiniMax-01: lightning states (decay by the
  scanned layer index)."""
  model = _model(family, layers, scan="scan")
  assert model.cfg.num_periods >= 2
  error, scale = _max_error(model)
  assert error <= 1e-4 * max(1.0, scale), (family, error, scale)


def test_window_layers_keep_only_their_window():
  import jax.numpy as jnp  # noqa: PLC0415

  from modeling import generate  # noqa: PLC0415

  model = _model("gpt_oss")  # alternating window-8 and global layers
  prompts = jnp.ones((2, 16), jnp.int32)
  _, caches = generate.prefill(model, prompts, jnp.array([16, 3]), cache_len=64)
  sizes = [caches[p]["k"].shape[1] for p in sorted(caches)]
  assert sorted(set(sizes)) == [8, 64], sizes
  ring = next(c for c in caches.values() if c["k"].shape[1] == 8)
  # Row 0 holds positions 8..15 (slot p % 8); row 1 only 0..2.
  assert np.asarray(ring["pos"][0]).tolist() == [8, 9, 10, 11, 12, 13, 14, 15]
  assert np.asarray(ring["pos"][1]).tolist() == [0, 1, 2, -1, -1, -1, -1, -1]


def test_sampling_settings():
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from modeling.generate import Sampling, check, sample  # noqa: PLC0415

  logits = jnp.asarray(np.random.default_rng(0).standard_normal((4, 50)), jnp.float32)
  greedy = np.asarray(sample(logits, None, Sampling(greedy=True)))
  key = jax.random.key(0)
  assert (np.asarray(sample(logits, key, Sampling(top_k=1))) == greedy).all()
  assert (np.asarray(sample(logits, key, Sampling(top_p=1e-6))) == greedy).all()
  # top-k 3: every draw is one of each row's 3 largest logits.
  top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
  for seed in range(20):
    drawn = np.asarray(sample(logits, jax.random.key(seed), Sampling(top_k=3)))
    assert all(d in row for d, row in zip(drawn, top3))
  for bad, message in [
    (Sampling(top_p=0.0), "top_p=0.0 is outside"),
    (Sampling(top_p=1.5), "top_p=1.5 is outside"),
    (Sampling(top_k=-1), "top_k=-1"),
    (Sampling(temperature=0.0), "temperature=0.0"),
  ]:
    with pytest.raises(ValueError, match=message):
      check(bad)


def test_generate_stops_rows_at_eos_and_rejects_bad_prompts():
  from modeling import generate  # noqa: PLC0415

  model = _model("llama3")
  prompts = [[5, 6, 7], [9]]
  free = generate.generate(model, prompts, 12)
  assert [len(r) for r in free] == [12, 12]
  eos = free[0][4]  # row 0 stops at its 5th token (or earlier if it appeared before)
  stopped = generate.generate(model, prompts, 12, eos_id=eos)
  first = free[0].index(eos)
  assert stopped[0] == free[0][: first + 1]
  cut = free[1].index(eos) + 1 if eos in free[1] else 12
  assert stopped[1] == free[1][:cut]
  with pytest.raises(ValueError, match="at least one token"):
    generate.generate(model, [[1], []], 4)
  # Bursts of 1 or 5 device steps per call (EOS inside a burst) give the same tokens.
  assert generate.generate(model, prompts, 12, steps_per_call=5) == free
  assert generate.generate(model, prompts, 12, eos_id=eos, steps_per_call=1) == stopped
  assert generate.generate(model, prompts, 12, eos_id=eos, steps_per_call=5) == stopped
  with pytest.raises(ValueError, match=r"3 tokens is longer than .* \(model.max_len=2\)"):
    generate.generate(model, prompts, 4, max_len=2)
  with pytest.raises(ValueError, match="ask for at most 7 new tokens"):
    generate.generate(model, prompts, 8, max_len=10)
  assert len(generate.generate(model, prompts, 7, max_len=10)[0]) == 7


_ON_MESH = """
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from modeling import generate
from modeling.decoder import Decoder
from parallelism.mesh import make_mesh
from tests.conftest import family_config
from trainer import inference, precision

prompts = [[5, 17, 99, 3, 8], [7], [1, 2, 3], [9, 9]]
tokens = jnp.asarray([p + [0] * (8 - len(p)) for p in prompts], jnp.int32)
lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
for family in ("llama3", "deepseek_v3"):
  config = family_config(family)
  config.mesh.update(data=2, fsdp=2, tensor=2, expert=1)
  model = Decoder(precision.model_config(config), rngs=nnx.Rngs(0))
  mesh = make_mesh(config.mesh, jax.devices())
  sharded = inference.shard(model, mesh)
  ref, _ = generate.prefill(model, tokens, lengths, cache_len=32)
  got, caches = generate.prefill(sharded, tokens, lengths, cache_len=32, mesh=mesh)
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
  for cache in caches.values():
    assert cache["pos"].sharding.spec[0] == ("data", "fsdp"), cache["pos"].sharding
    if family == "llama3":  # [b, T, kv_heads, d]: kv heads over tensor
      assert tuple(cache["k"].sharding.spec)[:3] == (("data", "fsdp"), None, "tensor")
  alone = generate.generate(model, prompts, 12)
  assert generate.generate(sharded, prompts, 12, mesh=mesh) == alone, family
print("ok")
"""


def test_generate_on_a_mesh_equals_one_device(root):
  """On data=2, fsdp=2, tensor=2 fake devices (weights laid out as in training):
  the prefill's logits equal one device's, the caches shard batch over data and
  fsdp and (GQA) kv heads over tensor, and greedy tokens are one device's, for
  Llama 3 and DeepSeek-V3 (MLA's latent cache)."""
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  from tests.conftest import fake_devices_env  # noqa: PLC0415

  result = subprocess.run(
    [sys.executable, "-c", _ON_MESH], cwd=root, env=fake_devices_env(8),
    capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "ok"


def test_a_hugging_face_directory_takes_the_other_sections_from_the_config(tmp_path):
  """--checkpoint HF_DIR --config PRESET: the model (dimensions, max_len from
  max_position_embeddings) is config.json's, the other sections the preset's; a
  preset of another family is refused before any weight is read; a prompt longer
  than max_len is one error line from the script."""
  import jax.numpy as jnp  # noqa: PLC0415

  from modeling.hf import export  # noqa: PLC0415
  from tests.conftest import ROOT  # noqa: PLC0415
  from trainer import inference  # noqa: PLC0415

  model = _model("llama3")
  exported = family_config("llama3")
  exported.model.max_len = 24
  export.save(model, exported.model, tmp_path)
  user = family_config("llama3")
  user.model.num_layers = 1  # the preset's dimensions do not apply
  user.data.path = "held_out/*.txt"
  user.compute.scan_layers = "unroll"  # (hf.load alone scans)
  config, loaded = inference.load(str(tmp_path), user)
  assert config.model.num_layers == exported.model.num_layers
  assert config.model.max_len == 24 and config.data.path == "held_out/*.txt"
  assert loaded.cfg.num_periods == 0  # compute.scan_layers=unroll applied
  tokens = jnp.asarray([[5, 17, 99, 3]])
  np.testing.assert_allclose(loaded(tokens)[0], model(tokens)[0], atol=1e-5)
  with pytest.raises(ValueError, match="holds a llama3 model, not qwen3"):
    inference.load(str(tmp_path), family_config("qwen3"))
  ids = ",".join(["5"] * 30)
  out = _script("--config", str(ROOT / "configs" / "llama3.py") + ":tiny", "--checkpoint",
                str(tmp_path), "--prompt_ids", ids, "--print_ids")  # fmt: skip
  assert out.returncode != 0
  assert "error: a prompt of 30 tokens is longer than the model's maximum length" in out.stderr


def test_nats_per_byte_counts_a_bpe_tokenizers_bytes_exactly(tmp_path):
  """Byte-level BPE pieces of one character (a tokenizer trained on ASCII text
  splits 'é' and '✓') are decoded together, so the targets' bytes are the text's."""
  from tests.test_data_sources import _tokenizer_json  # noqa: PLC0415
  from trainer import documents, inference  # noqa: PLC0415

  tok = documents.tokenizer(_tokenizer_json(tmp_path))
  text = "héllo wörld ✓ def f(x): return x"
  ids = tok.encode(text)  # ends with EOS (no bytes)
  batch = {"targets": np.stack([ids, ids]), "weights": np.ones((2, len(ids)), np.float32)}
  batch["weights"][1, : len(ids) // 2] = 0  # row 1: only its second half counts
  half = len(tok.decode(ids[len(ids) // 2 :]).encode())
  assert inference.target_bytes(tok, batch) == len(text.encode()) + half
  per_token = sum(len(tok.decode([i]).encode()) for i in ids)
  assert per_token != len(text.encode())  # what counting each token alone would say


HF_CASES = [
  ("dense", c)
  for c in ("llama", "gemma3", "gemma3n", "qwen3", "qwen2", "mistral", "olmo2", "olmo3", "smollm3")
] + [
  ("moe", c)
  for c in ("deepseek_v3", "deepseek_v32", "glm5", "gpt_oss", "llama4", "qwen3_next",
            "kimi_linear", "minimax01", "qwen3_moe", "qwen2_moe", "mixtral", "glm4_moe",
            "minimax_m2")
]  # fmt: skip


@pytest.mark.parametrize("suite,case", HF_CASES)
def test_greedy_tokens_equal_hf_generate(suite, case, tmp_path):
  """Three prompts of different lengths decoded as one batch give the tokens HF's
  greedy `generate` gives each prompt (20 new tokens, or fewer ending at EOS).
  Every HF parity case: sliding windows (8) and Llama 4's chunks shorter than
  prompt + new tokens, Gemma 3n's KV sharing, MLA, DSA (DeepSeek-V3.2, GLM-5),
  DeltaNet (Qwen3-Next), KDA (Kimi Linear), lightning attention (MiniMax-01). MiniMax-01's reference is HF generating without its cache:
  with it (transformers' MiniMax cache path) HF's own tokens differ from its
  uncached ones from the 6th token on, for all three prompts, while ours equal the
  uncached ones."""
  import torch  # noqa: PLC0415

  from modeling import generate, hf  # noqa: PLC0415
  from tests import test_hf_parity, test_hf_parity_moe  # noqa: PLC0415
  from tests.hf_common import TINY, VOCAB  # noqa: PLC0415

  hf_model = (test_hf_parity if suite == "dense" else test_hf_parity_moe)._build(case, tmp_path)
  _, model = hf.load(tmp_path)
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, VOCAB, n).tolist() for n in (11, 4, 7)]
  ours = generate.generate(model, prompts, 20, eos_id=TINY["eos_token_id"])
  for prompt, tokens in zip(prompts, ours):
    with torch.no_grad():
      out = hf_model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=20, do_sample=False, pad_token_id=TINY["pad_token_id"],
        use_cache=case != "minimax01",
      )  # fmt: skip
    assert tokens == out[0, len(prompt) :].tolist(), (case, prompt)
  assert sum(map(len, ours)) >= 30, ours  # not all cut short by EOS


def _script(*args, cwd=None):
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  from tests.conftest import ROOT  # noqa: PLC0415

  return subprocess.run(
    [sys.executable, str(ROOT / "scripts" / "generate.py"), *args], capture_output=True,
    text=True, timeout=600, cwd=cwd or ROOT,
  )  # fmt: skip


def test_scripts_decode_and_evaluate_a_workdir_as_the_library_does(tmp_path):
  """A 2-step run's workdir: its held-out loss through `inference.evaluate` is the
  train loop's, and scripts/evaluate.py runs; the generate script's greedy ids
  equal `generate` on the loaded model; text prompts go through the run's byte
  tokenizer; another family's --config and a bad top_p are one-line errors."""
  import json  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  from modeling import generate  # noqa: PLC0415
  from tests.conftest import ROOT, small_train_config  # noqa: PLC0415
  from trainer import inference  # noqa: PLC0415
  from trainer.trainer import Trainer  # noqa: PLC0415

  workdir = str(tmp_path / "run")
  config = small_train_config("llama3", steps=2, log_every=1)
  config.optim.warmup_steps = 1
  run = Trainer(config, workdir).run()
  saved, model = inference.load(workdir)
  # scripts/evaluate.py's numbers: the train loop's eval loss on the same batches.
  t = config.train
  result = inference.evaluate(saved, model, batch_size=t.batch_size, seq_len=t.seq_len,
                              max_batches=t.eval_batches, progress=False)  # fmt: skip
  assert result["nats_per_token"] == pytest.approx(run["eval"]["eval_loss"], rel=1e-5)
  assert 0 < result["bytes"] <= result["tokens"]  # a byte per target but EOS
  assert result["perplexity"] == pytest.approx(np.exp(result["nats_per_token"]))
  ev = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--checkpoint",
                       workdir, "--json", "--batches", "1"], capture_output=True, text=True,
                      timeout=600)  # fmt: skip
  assert ev.returncode == 0, ev.stderr[-2000:]
  assert json.loads(ev.stdout.strip().splitlines()[-1])["batches"] == 1
  expected = generate.generate(model, [[5, 17, 99], [7]], 6)
  out = _script("--checkpoint", workdir, "--prompt_ids", "5,17,99", "--prompt_ids", "7",
                "--greedy", "--max_new_tokens", "6", "--print_ids")  # fmt: skip
  assert out.returncode == 0, out.stderr[-2000:]
  lines = [[int(t) for t in line.split()] for line in out.stdout.strip().splitlines()]
  assert lines == expected
  text = _script("--checkpoint", workdir, "--prompt", "def f(", "--max_new_tokens", "4")
  assert text.returncode == 0, text.stderr[-2000:]
  wrong = _script("--config", str(ROOT / "configs" / "qwen3.py"), "--checkpoint", workdir,
                  "--prompt", "x")  # fmt: skip
  assert wrong.returncode != 0
  assert "holds a llama3 model, not qwen3" in wrong.stderr
  bad = _script("--checkpoint", workdir, "--prompt", "x", "--top_p", "1.5")
  assert bad.returncode != 0 and "error: top_p=1.5 is outside (0, 1]" in bad.stderr
  empty = _script("--checkpoint", str(tmp_path), "--prompt", "x")
  assert "is neither a run's workdir" in empty.stderr
