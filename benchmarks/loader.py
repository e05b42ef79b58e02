"""`scripts/bench.py data`: tokens/s of the input pipeline alone, for each source
kind and tokenizer, against the train step of the default model, same run.

The default corpus (the stdlib's .py files, in order, up to --mb megabytes) is
written out as text files, JSONL, Parquet, a `save_to_disk`-style Arrow
directory and (through scripts/prepare_data.py's code) tokenized ArrayRecord
shards. Each is read with the byte tokenizer and with a byte-level BPE
`tokenizer.json` trained here on the same text (--vocab ids), batches of the
preset's train shape: --batches of them from a cold start (opening files and
filling the first shuffle window of `data.shuffle_tokens` included; the default
pulls 2.5M tokens, over two windows of the default 1M). The train step's tokens/s is the preset's on its first batch
(scripts/bench.py's step timer). With --train_steps, a short run of the preset
on the default corpus reports `data_wait`: the fraction of its wall time the
loop spent waiting for the next batch (mean over its log records but the first,
which holds the compile).
"""

import json
import pathlib
import tempfile
import time


def add_parser(sub):
  p = sub.add_parser("data", help="loader tokens/s per source kind and tokenizer vs the step")
  p.add_argument("--config", default="configs/llama3.py:tiny")
  p.add_argument("--mb", type=float, default=32.0, help="megabytes of the default corpus")
  p.add_argument("--vocab", type=int, default=32_000, help="the BPE tokenizer's vocabulary")
  p.add_argument("--batches", type=int, default=600, help="timed batches per source")
  p.add_argument("--train_steps", type=int, default=30, help="steps of the data_wait run (0: none)")


def _corpus(megabytes: float) -> list[str]:
  from trainer import data  # noqa: PLC0415

  texts, size = [], 0
  for path in data.default_corpus_files():
    raw = path.read_bytes()
    texts.append(raw.decode("utf-8", errors="replace"))
    size += len(raw)
    if size >= megabytes * 1e6:
      break
  return texts


def _write_sources(root: pathlib.Path, texts: list[str]) -> dict:
  """{kind: (data.path, data.format, data.field)} of the corpus in each form."""
  import pyarrow as pa  # noqa: PLC0415
  import pyarrow.parquet as pq  # noqa: PLC0415

  for kind in ("text", "jsonl", "parquet", "arrow"):
    (root / kind).mkdir()
  for i, text in enumerate(texts):
    (root / "text" / f"{i:05d}.txt").write_text(text)
  chunks = [texts[i : i + 200] for i in range(0, len(texts), 200)]
  names = []
  for k, chunk in enumerate(chunks):
    lines = "".join(json.dumps({"text": t}) + "\n" for t in chunk)
    (root / "jsonl" / f"{k:03d}.jsonl").write_text(lines)
    table = pa.table({"text": chunk})
    pq.write_table(table, root / "parquet" / f"{k:03d}.parquet", row_group_size=50)
    names.append(f"data-{k:05d}-of-{len(chunks):05d}.arrow")
    with pa.ipc.new_stream(root / "arrow" / names[-1], table.schema) as writer:
      for batch in table.to_batches(max_chunksize=50):
        writer.write_batch(batch)
  state = {"_data_files": [{"filename": n} for n in names]}
  (root / "arrow" / "state.json").write_text(json.dumps(state))
  return {
    "text": (str(root / "text" / "*.txt"), "text", "text"),
    "jsonl": (str(root / "jsonl" / "*.jsonl"), "auto", "text"),
    "parquet": (str(root / "parquet" / "*.parquet"), "auto", "text"),
    "arrow": (str(root / "arrow"), "auto", "text"),
  }


def _bpe(texts: list[str], vocab: int, path: pathlib.Path) -> str:
  import tokenizers  # noqa: PLC0415

  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=vocab, special_tokens=["<|endoftext|>"],
    initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
  )  # fmt: skip
  tok.train_from_iterator(texts, trainer)
  tok.save(str(path))
  return str(path)


def _loader_tokens_per_s(data_cfg, batch_size: int, seq_len: int, batches: int) -> float:
  """Tokens/s of `batches` train batches from a cold start (opening the files and
  filling the first shuffle window included)."""
  from trainer import pipeline  # noqa: PLC0415

  start = time.perf_counter()
  it = iter(pipeline.make_dataset(data_cfg, split="train", batch_size=batch_size, seq_len=seq_len,
                                  seed=0))  # fmt: skip
  for _ in range(batches):
    next(it)
  return batches * batch_size * seq_len / (time.perf_counter() - start)


def _data_wait(config, steps: int, workdir: str) -> float:
  from trainer.trainer import Trainer  # noqa: PLC0415

  config.train.update(steps=steps, log_every=5, eval_every=0, eval_batches=1)
  config.optim.warmup_steps = min(config.optim.warmup_steps, steps - 1)
  config.logging.progress_bar = False
  Trainer(config, workdir).run()
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  waits = [r["data_wait"] for r in map(json.loads, lines) if "data_wait" in r][1:]
  return sum(waits) / max(len(waits), 1)


def bench(args):
  from scripts.bench import load_config, step_tokens_per_s, train_batch  # noqa: PLC0415
  from trainer import prepare  # noqa: PLC0415

  config = load_config(args.config)
  t = config.train
  model_tps, _ = step_tokens_per_s(config, train_batch(config), steps=5)
  texts = _corpus(args.mb)
  print(f"{args.config}: batch {t.batch_size} x {t.seq_len}; train step {model_tps:.0f} tokens/s; "
        f"corpus {sum(map(len, texts)) / 1e6:.1f} MB ({len(texts)} files)")  # fmt: skip
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    sources = _write_sources(root, texts)
    start = time.perf_counter()
    bpe = _bpe(texts, args.vocab, root / "tokenizer.json")
    print(
      f"BPE tokenizer.json trained here: vocab {args.vocab} in {time.perf_counter() - start:.1f} s"
    )
    print(f"{'source':12s} {'tokenizer':10s} {'tokens/s':>12s} {'x step':>8s}")
    for tok_name, tok in (("byte", "byte"), ("bpe", bpe)):
      kinds = dict(sources)
      prep = root / f"prepared-{tok_name}"
      text_cfg = config.data.copy_and_resolve_references()
      text_cfg.update(path=sources["text"][0], format="text", tokenizer=tok)
      prepare.prepare(text_cfg, prep, num_shards=4, progress=False)
      kinds["arrayrecord"] = (str(prep), "auto", "text")
      for kind, (path, fmt, field) in kinds.items():
        cfg = config.data.copy_and_resolve_references()
        cfg.update(path=path, format=fmt, field=field, tokenizer=tok)
        tps = _loader_tokens_per_s(cfg, t.batch_size, t.seq_len, args.batches)
        print(f"{kind:12s} {tok_name:10s} {tps:12.0f} {tps / model_tps:8.1f}")
    if args.train_steps:
      wait = _data_wait(load_config(args.config), args.train_steps, str(root / "run"))
      print(f"data_wait of a {args.train_steps}-step run on the default corpus: {wait:.2%} "
            "of its wall time")  # fmt: skip
