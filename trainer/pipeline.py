"""Packed grain batches of the sources trainer/data.py resolves.

A document is its tokens followed by EOS. Documents are concatenated and split
into rows of `seq_len + 1` tokens by grain's ConcatThenSplitIterDataset, which
also gives per-row segment ids and positions; train rows are shuffled within
windows of `data.shuffle_tokens` (grain's WindowShuffleIterDataset), and each
row is shifted into (inputs, targets). A mixture (`data.sources`,
trainer/mixture.py) packs each source's rows on its own and interleaves the rows
by weight (grain's `IterDataset.mix`) before batching; its batches carry
`tokens_seen` per source.

Input that cannot be a document is skipped and counted by reason (`Skipped`):
empty files or texts, invalid UTF-8, JSONL lines that are not JSON, records
without a string `data.field`. The trainer reports the counts.
"""

import functools

import grain
import numpy as np
from absl import flags

from trainer import data, mixture
from trainer.documents import Skipped, data_tokenizer, read_documents

# Local files are cheap to read: a few threads and a small buffer keep the
# first batch fast and memory bounded even for large files.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=64)


def _shift(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Packed rows [batch, seq + 1] -> model batch [batch, seq] (see make_dataset)."""
  tokens = rows["tokens"]  # [batch, seq + 1]
  seg = rows["tokens_segment_ids"]  # [batch, seq + 1]
  pos = rows["tokens_positions"]  # [batch, seq + 1]
  in_seg, tgt_seg = seg[:, :-1], seg[:, 1:]
  # Only predict the next token of the same document; never across EOS or into padding.
  weights = ((in_seg == tgt_seg) & (in_seg != 0)).astype(np.float32)
  return {
    "inputs": tokens[:, :-1].astype(np.int32),  # [batch, seq]
    "targets": tokens[:, 1:].astype(np.int32),  # [batch, seq]
    "segment_ids": in_seg.astype(np.int32),  # [batch, seq]
    "positions": pos[:, :-1].astype(np.int32),  # [batch, seq]
    "weights": weights,  # [batch, seq]
    **({"source": rows["source"]} if "source" in rows else {}),  # [batch] (a mixture's)
  }


class _Documents(grain.experimental.FlatMapTransform):
  """A file's (or record's) list of token arrays -> one element per document."""

  max_fan_out = 2**31 - 1  # documents per file; grain's iterator does not cap it

  def flat_map(self, docs):
    return [{"tokens": d} for d in docs]


class _KeptDocuments(grain.experimental.FlatMapTransform):
  """A worker's {"docs", "skips"} of one item -> one element per document, the
  item's skipped places riding on its first (an item of no documents gives one
  empty element, dropped in the main process after its skips are counted)."""

  max_fan_out = 2**31 - 1

  def flat_map(self, result):
    docs = result["docs"] or [np.zeros(0, np.int32)]
    return [{"tokens": d, "skips": result["skips"] if i == 0 else []} for i, d in enumerate(docs)]


def _read_in_worker(item, *, fmt: str, field: str, tok, strict: bool) -> dict:
  """read_documents in a worker process: its skipped places come back with the
  documents (the main process's Skipped cannot be shared)."""
  kept = Skipped(strict)
  docs = read_documents(item, fmt=fmt, field=field, tok=tok, skipped=kept)
  return {"docs": docs, "skips": kept.places}


class _CountSkips:
  """Main process: adds a worker's skipped places to `skipped`; -> {"tokens"}."""

  def __init__(self, skipped: Skipped):
    self.skipped = skipped

  def __call__(self, element):
    for place in element["skips"]:
      self.skipped.add(*place)
    return {"tokens": element["tokens"]}


def _record_documents(record: bytes, dtype) -> list:
  return [np.frombuffer(record, dtype).astype(np.int32)]


def _source(data_cfg, items, skipped: Skipped) -> tuple[grain.MapDataset, object]:
  """(MapDataset over files or records, item -> list of token arrays; with
  data.workers, item -> {"docs", "skips"} for a worker process)."""
  if data.is_prepared(data_cfg):
    meta = data.prepared_meta(data_cfg)
    records = grain.sources.ArrayRecordDataSource([str(f) for f in items])
    return grain.MapDataset.source(records), functools.partial(
      _record_documents, dtype=np.dtype(meta["dtype"])
    )
  kw = dict(fmt=data_cfg.format, field=data_cfg.field, tok=data_tokenizer(data_cfg))
  if data_cfg.workers:  # (a prepared directory has nothing to tokenize: read above)
    read = functools.partial(_read_in_worker, strict=skipped.strict, **kw)
  else:
    read = functools.partial(read_documents, skipped=skipped, **kw)
  return grain.MapDataset.source([f if isinstance(f, tuple) else str(f) for f in items]), read


def _rows(ds, read, *, split: str, seq_len: int, seed: int, window: int = 0, workers=None):
  """One packed stream of rows of the files or records in `ds`: train shuffles
  every epoch and never ends, and shuffles its rows within windows of `window`
  rows; eval is one pass in order. workers (num_workers, the main process's
  Skipped): read and tokenize in that many grain worker processes, each taking
  its share of the items in turn (deterministic), and pack here."""
  if split == "train":
    ds = ds.shuffle(seed).repeat(None)  # each epoch is shuffled differently
  read_items = ds.map(read).to_iter_dataset(_READ_OPTIONS)
  if workers:
    num_workers, skipped = workers
    if not flags.FLAGS.is_parsed():  # grain's worker start reads its absl flags
      flags.FLAGS.mark_as_parsed()
    docs = grain.experimental.FlatMapIterDataset(read_items, _KeptDocuments()).mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=64)
    )
    docs = docs.map(_CountSkips(skipped)).filter(lambda d: len(d["tokens"]) > 0)
  else:
    docs = grain.experimental.FlatMapIterDataset(read_items, _Documents())
  packed = _JsonSafeState(
    grain.experimental.ConcatThenSplitIterDataset(docs, length_struct={"tokens": seq_len + 1})
  )  # {"tokens", "tokens_segment_ids", "tokens_positions"}: [seq + 1] each
  if split == "train" and window:  # a long document would fill whole batches
    packed = grain.experimental.WindowShuffleIterDataset(packed, window_size=window, seed=seed)
  return packed


def _batched(rows: grain.IterDataset, batch_size: int, split: str) -> grain.IterDataset:
  return rows.batch(batch_size, drop_remainder=(split == "train")).map(_shift)


class _JsonSafeState(grain.IterDataset):
  """grain's packer with a state that survives the checkpoint's JSON: JSON turns
  its no-remainder marker (-1, -1) into a list, which grain (0.2.18) then reads
  as a remainder, so a state saved at a document boundary (or at the start of a
  shuffle window) restored one row ahead. Lists go back to tuples."""

  def __iter__(self):
    return _JsonSafeStateIterator(self._parent.__iter__())


class _JsonSafeStateIterator(grain.DatasetIterator):
  def __next__(self):
    return next(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    slices = {k: tuple(v) for k, v in state["remainder_slices"].items()}
    self._parent.set_state({**state, "remainder_slices": slices})


def _concat_rows(blocks: tuple[dict, ...]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def make_dataset(
  data_cfg,
  *,
  split: str,
  batch_size: int,
  seq_len: int,
  seed: int,
  shards: int = 1,
  rows: slice | None = None,
  skipped: Skipped | None = None,
) -> grain.IterDataset:
  """Packed batches of `split`, or of just the `rows` of each batch.

  train: each global batch is `shards` blocks of batch_size / shards rows;
  block j packs its own shard of the input (items[j::shards], or records
  j::shards of a prepared directory; of each source, for a mixture), reshuffled
  every epoch, infinite. Only the blocks `rows` covers are read (a process reads
  its own rows, and the global batch is the same for any process count). eval
  (one source; a mixture's is `eval_batches`): the whole eval split in order,
  one pass, the last batch may be short. Each element: inputs, targets,
  segment_ids, positions (int32 [rows, seq]) and weights (float32 [rows, seq]);
  a mixture's also tokens_seen (int64 [sources]). Skipped input is counted in
  `skipped`.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r} must be 'train' or 'eval'")
  if batch_size < 1 or seq_len < 1:
    raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be >= 1")
  if shards < 1 or batch_size % shards:
    raise ValueError(
      f"data.shards={shards} must be a positive divisor of train.batch_size={batch_size}"
    )
  skipped = skipped if skipped is not None else Skipped()
  if split == "eval":
    if data_cfg.sources:
      raise ValueError("a mixture's eval batches come from eval_batches (one source at a time)")
    eval_items = data.split_items(data_cfg)[1]
    if not eval_items:
      raise ValueError(f"the eval split of data.path={data_cfg.path!r} is empty")
    ds, read = _source(data_cfg, eval_items, skipped)
    rows = _rows(
      ds, read, split=split, seq_len=seq_len, seed=seed, workers=_workers(data_cfg, skipped)
    )
    return _batched(rows, batch_size, split)
  return _train_blocks(data_cfg, batch_size, seq_len, seed, shards, rows, skipped)


def _workers(data_cfg, skipped: Skipped):
  """_rows' workers: data.workers processes tokenize raw input (not a prepared directory)."""
  return (data_cfg.workers, skipped) if data_cfg.workers else None


def _block_rows(data_cfg, items, j: int, shards: int, seq_len: int, seed: int, skipped):
  """Train rows of block j of one source: packed from its shard j of `items`."""
  if data.is_prepared(data_cfg):
    whole, read = _source(data_cfg, items, skipped)
    ds = whole.slice(slice(j, None, shards))
    size = data.prepared_meta(data_cfg)["splits"]["train"]["tokens"]
  else:
    ds, read = _source(data_cfg, items[j::shards], skipped)
    size = sum(data.item_bytes(item, data_cfg) for item in items)  # bytes: >= the tokens
  if not len(ds):
    raise ValueError(
      f"data shard {j} of data.shards={shards} has no train input in "
      f"data.path={data_cfg.path!r}; lower data.shards or add data"
    )
  # A shuffle window holds at most about one pass over a block's input: a small
  # corpus would otherwise repeat thousands of times to fill it, and gain nothing.
  # Any window (of one row too) keeps the shuffle's place in the iterator state.
  window = min(data_cfg.shuffle_tokens, size // shards) // (seq_len + 1)
  window = max(window, 1) if data_cfg.shuffle_tokens else 0
  workers = _workers(data_cfg, skipped)
  return _rows(ds, read, split="train", seq_len=seq_len, seed=seed, window=window, workers=workers)


def _train_blocks(data_cfg, batch_size, seq_len, seed, shards, rows, skipped):
  """The train batches' blocks `rows` covers, each packed from its own shard of
  the input (a mixture: of each source, rows interleaved by weight), zipped into
  rows of one batch."""
  block = batch_size // shards
  lo, hi, _ = (rows or slice(0, batch_size)).indices(batch_size)
  if lo % block or hi % block or hi <= lo:
    raise ValueError(
      f"rows {lo}:{hi} of each batch are not whole blocks of batch_size / data.shards = "
      f"{block}; make data.shards a multiple of the process count"
    )
  sources = mixture.sources(data_cfg) if data_cfg.sources else []
  items = [data.split_items(s.cfg)[0] for s in sources] or [data.split_items(data_cfg)[0]]
  streams = []
  for j in range(lo // block, hi // block):
    if not sources:
      block_rows = _block_rows(data_cfg, items[0], j, shards, seq_len, seed, skipped)
    else:
      parts = {
        s.name: _block_rows(s.cfg, its, j, shards, seq_len, seed, skipped).map(mixture.tag(k))
        for k, (s, its) in enumerate(zip(sources, items))
      }
      block_rows = grain.IterDataset.mix(parts, {s.name: s.weight for s in sources})
    streams.append(_batched(block_rows, block, "train"))
  out = streams[0] if len(streams) == 1 else grain.experimental.ZipIterDataset(streams)
  out = out if len(streams) == 1 else out.map(_concat_rows)
  return mixture.CountTokens(out, len(sources)) if sources else out


def _pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads the batch dim with zero rows (segment 0, weight 0) up to batch_size."""
  n = batch["inputs"].shape[0]
  return {k: np.pad(v, [(0, batch_size - n), (0, 0)]) for k, v in batch.items()}


def eval_batches(
  data_cfg, *, batch_size: int, seq_len: int, max_batches: int, skipped: Skipped | None = None
) -> list[dict]:
  """The first max_batches eval batches, all of batch_size rows; [] if the eval
  split is empty. A mixture's: its sources' eval batches in turn (one of each,
  then the next of each), so each source weighs alike."""
  per_source = []
  for cfg in data.source_configs(data_cfg):
    if not data.split_items(cfg)[1]:
      continue
    ds = make_dataset(
      cfg, split="eval", batch_size=batch_size, seq_len=seq_len, seed=0, skipped=skipped
    )
    batches = []
    for batch in ds:
      if len(batches) == max_batches:
        break
      batches.append(_pad_batch(batch, batch_size))
    per_source.append(batches)
  turns = []
  for i in range(max_batches):
    turns += [batches[i] for batches in per_source if i < len(batches)]
  return turns[:max_batches]
