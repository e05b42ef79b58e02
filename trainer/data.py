"""Byte-level text data: file lists, deterministic splits, packed grain batches.

A document is one file: its bytes (ids 0..255) followed by EOS. Documents are
concatenated and split into rows of `seq_len + 1` tokens by grain's
ConcatThenSplitIterDataset, which also gives per-row segment ids and positions;
each row is then shifted into (inputs, targets).
"""

import glob
import hashlib
import os
import pathlib
import sysconfig

import grain
import numpy as np

EOS_ID = 256
BYTE_VOCAB_SIZE = 257

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
  """(train, eval) file lists; eval iff sha1(relative posix path) % 10_000 < eval_fraction * 10_000."""
  if not 0.0 <= eval_fraction <= 1.0:
    raise ValueError(f"data.eval_fraction={eval_fraction!r} must be in [0, 1]")
  root = pathlib.Path(root)
  train, evals = [], []
  for f in files:
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
  """(files sorted by relative path, root) for data_cfg.path ("" = stdlib corpus)."""
  if data_cfg.tokenizer != "byte":
    raise ValueError(f"data.tokenizer={data_cfg.tokenizer!r} is not supported; use 'byte'")
  path = data_cfg.path
  if path == "":
    return default_corpus_files(), pathlib.Path(sysconfig.get_paths()["stdlib"])
  pattern = os.path.expanduser(path)
  root = _glob_root(pattern)
  files = [pathlib.Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
  if not files:
    raise ValueError(
      f"data.path={path!r} matches no files; point it at existing text files or "
      "leave it empty for the default corpus"
    )
  files.sort(key=lambda f: f.relative_to(root).as_posix())
  return files, root


def _read_tokens(path: str) -> dict[str, np.ndarray]:
  """One document: {"tokens": int32 [n_bytes + 1]} (bytes then EOS)."""
  with open(path, "rb") as f:
    data = f.read()
  tokens = np.empty(len(data) + 1, np.int32)
  tokens[:-1] = np.frombuffer(data, np.uint8)
  tokens[-1] = EOS_ID
  return {"tokens": tokens}


def _is_nonempty(doc: dict[str, np.ndarray]) -> bool:
  return len(doc["tokens"]) > 1  # more than the EOS


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


def _packed(files, *, split: str, batch_size: int, seq_len: int, seed: int) -> grain.IterDataset:
  """One packed stream of `files`: train shuffles every epoch and never ends."""
  ds = grain.MapDataset.source([str(f) for f in files])
  if split == "train":
    ds = ds.shuffle(seed).repeat(None)  # each epoch is shuffled differently
  ds = ds.map(_read_tokens).filter(_is_nonempty)
  packed = grain.experimental.ConcatThenSplitIterDataset(
    ds.to_iter_dataset(_READ_OPTIONS),
    length_struct={"tokens": seq_len + 1},
  )  # {"tokens", "tokens_segment_ids", "tokens_positions"}: [seq + 1] each
  batched = packed.batch(batch_size, drop_remainder=(split == "train"))
  return batched.map(_shift)


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
) -> grain.IterDataset:
  """Packed byte batches of `split`, or of just the `rows` of each batch.

  train: each global batch is `shards` blocks of batch_size / shards rows;
  block j packs its own file shard files[j::shards], reshuffled every epoch,
  infinite. Only the blocks `rows` covers are read (a process reads its own
  rows, and the global batch is the same for any process count). eval: all
  eval files in order, one pass, the last batch may be short. Each element:
  inputs, targets, segment_ids, positions (int32 [rows, seq]) and weights
  (float32 [rows, seq]).
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r} must be 'train' or 'eval'")
  if batch_size < 1 or seq_len < 1:
    raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be >= 1")
  if shards < 1 or batch_size % shards:
    raise ValueError(
      f"data.shards={shards} must be a positive divisor of train.batch_size={batch_size}"
    )
  files, root = resolve_files(data_cfg)
  train_files, eval_files = split_files(files, root, data_cfg.eval_fraction)
  if split == "eval":
    if not eval_files:
      raise ValueError(f"the eval split of data.path={data_cfg.path!r} has no files")
    return _packed(eval_files, split=split, batch_size=batch_size, seq_len=seq_len, seed=seed)
  block = batch_size // shards
  lo, hi, _ = (rows or slice(0, batch_size)).indices(batch_size)
  if lo % block or hi % block or hi <= lo:
    raise ValueError(
      f"rows {lo}:{hi} of each batch are not whole blocks of batch_size / data.shards = "
      f"{block}; make data.shards a multiple of the process count"
    )
  streams = []
  for j in range(lo // block, hi // block):
    if not train_files[j::shards]:
      raise ValueError(
        f"data shard {j} of data.shards={shards} has no train files in "
        f"data.path={data_cfg.path!r}; lower data.shards or add files"
      )
    kw = dict(split=split, batch_size=block, seq_len=seq_len, seed=seed)
    streams.append(_packed(train_files[j::shards], **kw))
  if len(streams) == 1:
    return streams[0]
  return grain.experimental.ZipIterDataset(streams).map(_concat_rows)


def _pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads the batch dim with zero rows (segment 0, weight 0) up to batch_size."""
  n = batch["inputs"].shape[0]
  return {k: np.pad(v, [(0, batch_size - n), (0, 0)]) for k, v in batch.items()}


def eval_batches(data_cfg, *, batch_size: int, seq_len: int, max_batches: int) -> list[dict]:
  """The first max_batches eval batches, all of batch_size rows; [] if the eval split is empty."""
  files, root = resolve_files(data_cfg)
  if not split_files(files, root, data_cfg.eval_fraction)[1]:
    return []
  ds = make_dataset(data_cfg, split="eval", batch_size=batch_size, seq_len=seq_len, seed=0)
  batches = []
  for batch in ds:
    if len(batches) == max_batches:
      break
    batches.append(_pad_batch(batch, batch_size))
  return batches
