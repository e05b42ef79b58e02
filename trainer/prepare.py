"""Text / JSONL / Parquet / Arrow input -> a directory of tokenized ArrayRecord shards.

`scripts/prepare_data.py` is the command. The input files are split into train
and eval by the same path hash as at training time (`data.eval_fraction`) and
tokenized in parallel worker processes; documents go round-robin to
`train-0000i-of-0000N.array_record` (one record per document: its token ids
with EOS, uint16 when the vocabulary fits, else uint32) and the eval shard.
`meta.json` records the tokenizer (checked against `data.tokenizer` when a run
reads the directory), the counts of documents, tokens and skipped input. The
directory appears complete or not at all: it is written as `<out>.partial` and
renamed at the end.
"""

import json
import multiprocessing
import os
import pathlib
import shutil
import time

import numpy as np
import tqdm
from array_record.python.array_record_module import ArrayRecordWriter

from trainer import data, documents

_worker = {}  # per worker process: the data config and its tokenizer


def _init_worker(fmt, field, tokenizer, eos_token, sizes: dict, strict: bool):
  tok = documents.tokenizer(tokenizer, eos_token)
  _worker.update(fmt=fmt, field=field, tok=tok, sizes=sizes, strict=strict)


def _tokenize_item(item):
  """-> (documents, skipped counts, first skipped place per reason, input bytes)."""
  skipped = documents.Skipped(strict=_worker["strict"])
  docs = documents.read_documents(item, _worker["fmt"], _worker["field"], _worker["tok"], skipped)
  return docs, skipped.counts, skipped.first, _worker["sizes"][item]


def _key(item):
  """An item as the workers see it: a path string, or (path, unit)."""
  return item if isinstance(item, tuple) else str(item)


def prepare(data_cfg, out, *, num_shards: int = 8, workers: int = 0, progress: bool = True):
  """Writes the prepared directory `out` (must not exist or be empty) from the
  input of `data_cfg`; returns its meta dict (with `seconds`)."""
  if data.is_prepared(data_cfg):
    raise ValueError(f"data.path={data_cfg.path!r} is already a prepared directory")
  if num_shards < 1:
    raise ValueError(f"--num_shards={num_shards} must be >= 1")
  out = pathlib.Path(out)
  if out.exists() and any(out.iterdir()):
    raise ValueError(f"{out} is not empty; prepare into a new directory")
  train, evals = data.split_items(data_cfg)
  sizes = {item: data.item_bytes(item, data_cfg) for item in map(_key, train + evals)}
  tok = documents.data_tokenizer(data_cfg)
  dtype = np.dtype(np.uint16 if tok.vocab_size <= 2**16 else np.uint32)
  partial = out.with_name(out.name + ".partial")
  shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
  partial.mkdir(parents=True)
  skipped, counts = documents.Skipped(), {}
  start = time.perf_counter()
  total = sum(sizes.values())
  bar = tqdm.tqdm(total=total, unit="B", unit_scale=True, disable=not progress)
  init = (data_cfg.format, data_cfg.field, data_cfg.tokenizer, data_cfg.eos_token, sizes,
          not data_cfg.skip_bad_records)  # fmt: skip
  context = multiprocessing.get_context("spawn")  # fork would copy tokenizers' threads
  with context.Pool(workers or os.cpu_count(), _init_worker, init) as pool:
    for split, split_files, n in (("train", train, num_shards), ("eval", evals, 1)):
      if not split_files:
        continue
      names = [f"{split}-{i:05d}-of-{n:05d}.array_record" for i in range(n)]
      writers = [ArrayRecordWriter(str(partial / name), "group_size:1") for name in names]
      docs = tokens = 0
      for file_docs, file_counts, first, size in pool.imap(
        _tokenize_item, list(map(_key, split_files)), chunksize=4
      ):
        for doc in file_docs:
          writers[docs % n].write(doc.astype(dtype).tobytes())
          docs, tokens = docs + 1, tokens + len(doc)
        skipped.merge(file_counts, first)
        bar.update(size)
      for w in writers:
        w.close()
      counts[split] = {"documents": docs, "tokens": tokens, "files": len(split_files)}
  bar.close()
  meta = {
    "tokenizer": data_cfg.tokenizer,
    "tokenizer_fingerprint": tok.fingerprint,
    "vocab_size": tok.vocab_size,
    "eos_id": tok.eos_id,
    "dtype": dtype.name,
    "source": data_cfg.path or "default corpus",
    "eval_fraction": data_cfg.eval_fraction,
    "splits": counts,
    "skipped": skipped.counts,
    "input_bytes": total,
  }
  (partial / data.META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
  if out.exists():
    out.rmdir()
  partial.rename(out)
  return meta | {"seconds": time.perf_counter() - start, "skipped_first": skipped.first}
