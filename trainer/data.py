"""Text data: sources, tokenizers, deterministic splits, packed grain batches.

Sources (`data.format`): text files (a file is one document), JSONL (a line is
one document: the string under `data.field`), Parquet and Arrow files (a row is
one document: its column `data.field`; read a row group / record batch at a
time, trainer/columnar.py), all by glob; a Hugging Face `datasets` directory
written by `save_to_disk` (its Arrow files); or a directory of tokenized
ArrayRecord shards written by `scripts/prepare_data.py` (a record is one
document). Tokenizers (`data.tokenizer`): `byte` (UTF-8 bytes 0..255, EOS
256) or a local `tokenizer.json` (the `tokenizers` package). A document is its
tokens followed by EOS. Documents are concatenated and split into rows of
`seq_len + 1` tokens by grain's ConcatThenSplitIterDataset, which also gives
per-row segment ids and positions; train rows are shuffled within windows of
`data.shuffle_tokens` (grain's WindowShuffleIterDataset), and each row is shifted
into (inputs, targets).

Input that cannot be a document is skipped and counted by reason (`Skipped`):
empty files or texts, invalid UTF-8, JSONL lines that are not JSON, records
without a string `data.field`. The trainer reports the counts.
"""

import functools
import glob
import hashlib
import json
import os
import pathlib
import sysconfig

import grain
import numpy as np

from trainer import columnar
from trainer.documents import Skipped, data_tokenizer, file_format, read_documents

FORMATS = ("auto", "text", "jsonl", *columnar.FORMATS, "arrayrecord")
META_FILE = "meta.json"  # a prepared directory's description (scripts/prepare_data.py)

_EXCLUDED_DIRS = ("site-packages", "dist-packages")
_GLOB_CHARS = set("*?[")
# Local files are cheap to read: a few threads and a small buffer keep the
# first batch fast and memory bounded even for large files.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=64)


def default_corpus_files() -> list[pathlib.Path]:
  """The interpreter's stdlib *.py files, sorted by path relative to the stdlib root."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  rel_paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    # Installed packages differ per machine; prune them from the walk.
    dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
    rel_dir = pathlib.Path(dirpath).relative_to(root)
    rel_paths += [(rel_dir / f).as_posix() for f in filenames if f.endswith(".py")]
  return [root / p for p in sorted(rel_paths)]


def _is_eval(rel_path: str, eval_fraction: float) -> bool:
  h = int(hashlib.sha1(rel_path.encode("utf-8")).hexdigest(), 16)
  return h % 10_000 < eval_fraction * 10_000


def split_files(files, root, eval_fraction: float) -> tuple[list, list]:
  """(train, eval) item lists; eval iff sha1(relative posix path, ":unit" added for a
  Parquet / Arrow unit) % 10_000 < eval_fraction * 10_000."""
  if not 0.0 <= eval_fraction <= 1.0:
    raise ValueError(f"data.eval_fraction={eval_fraction!r} must be in [0, 1]")
  root = pathlib.Path(root)
  train, evals = [], []
  for f in files:
    if isinstance(f, tuple):  # (path, unit) of a Parquet / Arrow file
      rel = f"{pathlib.Path(f[0]).relative_to(root).as_posix()}:{f[1]}"
    else:
      rel = pathlib.Path(f).relative_to(root).as_posix()
    (evals if _is_eval(rel, eval_fraction) else train).append(f)
  return train, evals


def _glob_root(pattern: str) -> pathlib.Path:
  """Longest leading directory of `pattern` without glob characters."""
  parts = pathlib.Path(pattern).parts
  prefix = []
  for part in parts:
    if _GLOB_CHARS & set(part):
      break
    prefix.append(part)
  if len(prefix) == len(parts):  # a literal file path: its directory is the root
    prefix = prefix[:-1]
  return pathlib.Path(*prefix) if prefix else pathlib.Path(".")


def resolve_files(data_cfg) -> tuple[list[pathlib.Path], pathlib.Path]:
  """(files sorted by relative path, root) for data_cfg.path ("" = stdlib corpus);
  for a prepared directory, its ArrayRecord shards."""
  check(data_cfg)
  path = data_cfg.path
  if path == "":
    return default_corpus_files(), pathlib.Path(sysconfig.get_paths()["stdlib"])
  if is_prepared(data_cfg):
    root = pathlib.Path(os.path.expanduser(path))
    return sorted(root.glob("*.array_record")), root
  pattern = os.path.expanduser(path)
  arrow = columnar.dataset_files(pattern) if os.path.isdir(pattern) else None
  if arrow is not None:  # a Hugging Face `save_to_disk` directory
    return arrow, pathlib.Path(pattern)
  root = _glob_root(pattern)
  files = [pathlib.Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
  if not files and os.path.isdir(pattern):
    raise ValueError(
      f"data.path={path!r} is a directory without {META_FILE}; give a glob of its files "
      f"(e.g. {os.path.join(path, '**', '*.txt')!r}) or prepare it with scripts/prepare_data.py"
    )
  if not files:
    raise ValueError(
      f"data.path={path!r} matches no files; point it at existing text or JSONL files, "
      "a directory from scripts/prepare_data.py, or leave it empty for the default corpus"
    )
  files.sort(key=lambda f: f.relative_to(root).as_posix())
  return files, root


def _meta(data_cfg) -> dict:
  """A prepared directory's meta.json."""
  return json.loads((pathlib.Path(os.path.expanduser(data_cfg.path)) / META_FILE).read_text())


def is_prepared(data_cfg) -> bool:
  """Whether data.path is a directory written by scripts/prepare_data.py."""
  if not data_cfg.path or data_cfg.format not in ("auto", "arrayrecord"):
    return False
  return (pathlib.Path(os.path.expanduser(data_cfg.path)) / META_FILE).is_file()


def check(data_cfg):
  """data.format / data.tokenizer errors, and a prepared directory's tokenizer
  against data.tokenizer."""
  if data_cfg.format not in FORMATS:
    raise ValueError(f"data.format={data_cfg.format!r} is not valid; use one of {FORMATS}")
  if data_cfg.shuffle_tokens < 0:
    raise ValueError(f"data.shuffle_tokens={data_cfg.shuffle_tokens} must be >= 0 (0 = off)")
  if data_cfg.eos_token and data_cfg.tokenizer == "byte":
    raise ValueError(
      f"data.eos_token={data_cfg.eos_token!r} only applies to a tokenizer.json; "
      "data.tokenizer='byte' ends documents with id 256: leave data.eos_token empty"
    )
  tok = data_tokenizer(data_cfg)
  prepared = is_prepared(data_cfg)
  if data_cfg.format == "arrayrecord" and not prepared:
    raise ValueError(
      f"data.format='arrayrecord' needs data.path to be a directory written by "
      f"scripts/prepare_data.py (with {META_FILE}); got {data_cfg.path!r}"
    )
  if prepared:
    meta = _meta(data_cfg)
    if meta["tokenizer_fingerprint"] != tok.fingerprint:
      raise ValueError(
        f"data.path={data_cfg.path!r} was tokenized with {meta['tokenizer']!r}, not "
        f"data.tokenizer={data_cfg.tokenizer!r}; set data.tokenizer to that tokenizer"
      )


def split_shards(files) -> tuple[list, list]:
  """A prepared directory's (train, eval) shards: eval-* files are the eval split."""
  train = [f for f in files if f.name.startswith("train-")]
  return train, [f for f in files if f.name.startswith("eval-")]


def to_items(files, data_cfg) -> list:
  """What the pipeline reads one at a time: text / JSONL files as they are, and
  each Parquet row group or Arrow record batch as (path, unit)."""
  out = []
  for f in files:
    fmt = file_format(f, data_cfg.format)
    out += columnar.units(f, fmt, data_cfg.field) if fmt in columnar.FORMATS else [f]
  return out


def item_bytes(item, data_cfg) -> int:
  if isinstance(item, tuple):
    return columnar.unit_bytes(item, file_format(item[0], data_cfg.format))
  return os.path.getsize(item)


def split_items(data_cfg) -> tuple[list, list]:
  files, root = resolve_files(data_cfg)
  if is_prepared(data_cfg):
    return split_shards(files)
  return split_files(to_items(files, data_cfg), root, data_cfg.eval_fraction)


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
  }


class _Documents(grain.experimental.FlatMapTransform):
  """A file's (or record's) list of token arrays -> one element per document."""

  max_fan_out = 2**31 - 1  # documents per file; grain's iterator does not cap it

  def flat_map(self, docs):
    return [{"tokens": d} for d in docs]


def _record_documents(record: bytes, dtype) -> list:
  return [np.frombuffer(record, dtype).astype(np.int32)]


def _source(data_cfg, items, skipped: Skipped) -> tuple[grain.MapDataset, object]:
  """(MapDataset over files or records, item -> list of token arrays)."""
  if is_prepared(data_cfg):
    meta = _meta(data_cfg)
    records = grain.sources.ArrayRecordDataSource([str(f) for f in items])
    return grain.MapDataset.source(records), functools.partial(
      _record_documents, dtype=np.dtype(meta["dtype"])
    )
  read = functools.partial(
    read_documents,
    fmt=data_cfg.format,
    field=data_cfg.field,
    tok=data_tokenizer(data_cfg),
    skipped=skipped,
  )
  return grain.MapDataset.source([f if isinstance(f, tuple) else str(f) for f in items]), read


def _packed(
  ds, read, *, split: str, batch_size: int, seq_len: int, seed: int, window: int = 0
) -> grain.IterDataset:
  """One packed stream of the files or records in `ds`: train shuffles every epoch
  and never ends, and shuffles its rows within windows of `window` rows; eval is
  one pass in order."""
  if split == "train":
    ds = ds.shuffle(seed).repeat(None)  # each epoch is shuffled differently
  docs = grain.experimental.FlatMapIterDataset(
    ds.map(read).to_iter_dataset(_READ_OPTIONS), _Documents()
  )
  packed = _JsonSafeState(
    grain.experimental.ConcatThenSplitIterDataset(docs, length_struct={"tokens": seq_len + 1})
  )  # {"tokens", "tokens_segment_ids", "tokens_positions"}: [seq + 1] each
  if split == "train" and window:  # a long document would fill whole batches
    packed = grain.experimental.WindowShuffleIterDataset(packed, window_size=window, seed=seed)
  batched = packed.batch(batch_size, drop_remainder=(split == "train"))
  return batched.map(_shift)


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
  block j packs its own shard of the input (files[j::shards], or records
  j::shards of a prepared directory), reshuffled every epoch, infinite. Only
  the blocks `rows` covers are read (a process reads its own rows, and the
  global batch is the same for any process count). eval: the whole eval split
  in order, one pass, the last batch may be short. Each element: inputs,
  targets, segment_ids, positions (int32 [rows, seq]) and weights (float32
  [rows, seq]). Skipped input is counted in `skipped`.
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
  train_items, eval_items = split_items(data_cfg)
  if split == "eval":
    if not eval_items:
      raise ValueError(f"the eval split of data.path={data_cfg.path!r} is empty")
    ds, read = _source(data_cfg, eval_items, skipped)
    return _packed(ds, read, split=split, batch_size=batch_size, seq_len=seq_len, seed=seed)
  return _train_blocks(data_cfg, train_items, batch_size, seq_len, seed, shards, rows, skipped)


def _train_blocks(data_cfg, items, batch_size, seq_len, seed, shards, rows, skipped):
  """The train batches' blocks `rows` covers, each packed from its own shard of
  `items`, zipped into rows of one batch."""
  block = batch_size // shards
  lo, hi, _ = (rows or slice(0, batch_size)).indices(batch_size)
  if lo % block or hi % block or hi <= lo:
    raise ValueError(
      f"rows {lo}:{hi} of each batch are not whole blocks of batch_size / data.shards = "
      f"{block}; make data.shards a multiple of the process count"
    )
  prepared = is_prepared(data_cfg)
  if prepared:
    whole, read = _source(data_cfg, items, skipped)
    size = _meta(data_cfg)["splits"]["train"]["tokens"]
  else:  # bytes: at least the tokens
    size = sum(item_bytes(item, data_cfg) for item in items)
  # A shuffle window holds at most about one pass over a block's input: a small
  # corpus would otherwise repeat thousands of times to fill it, and gain nothing.
  # Any window (of one row too) keeps the shuffle's place in the iterator state.
  window = min(data_cfg.shuffle_tokens, size // shards) // (seq_len + 1)
  window = max(window, 1) if data_cfg.shuffle_tokens else 0
  kw = dict(split="train", batch_size=block, seq_len=seq_len, seed=seed, window=window)
  streams = []
  for j in range(lo // block, hi // block):
    if prepared:
      ds = whole.slice(slice(j, None, shards))
    else:
      ds, read = _source(data_cfg, items[j::shards], skipped)
    if not len(ds):
      raise ValueError(
        f"data shard {j} of data.shards={shards} has no train input in "
        f"data.path={data_cfg.path!r}; lower data.shards or add data"
      )
    streams.append(_packed(ds, read, **kw))
  if len(streams) == 1:
    return streams[0]
  return grain.experimental.ZipIterDataset(streams).map(_concat_rows)


def _pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads the batch dim with zero rows (segment 0, weight 0) up to batch_size."""
  n = batch["inputs"].shape[0]
  return {k: np.pad(v, [(0, batch_size - n), (0, 0)]) for k, v in batch.items()}


def eval_batches(
  data_cfg, *, batch_size: int, seq_len: int, max_batches: int, skipped: Skipped | None = None
) -> list[dict]:
  """The first max_batches eval batches, all of batch_size rows; [] if the eval split is empty."""
  if not split_items(data_cfg)[1]:
    return []
  ds = make_dataset(
    data_cfg, split="eval", batch_size=batch_size, seq_len=seq_len, seed=0, skipped=skipped
  )
  batches = []
  for batch in ds:
    if len(batches) == max_batches:
      break
    batches.append(_pad_batch(batch, batch_size))
  return batches
