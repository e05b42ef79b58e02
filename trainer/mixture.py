"""Weighted data mixtures: `data.sources`, a list of dicts

  {"path": ..., "weight": 1.0, "format": "auto", "field": "<data.field>", "name": ...}

each read as `data.path` / `data.format` / `data.field` alone would be (the
tokenizer and the rest of `data` are shared). trainer/pipeline.py packs each
source's rows on its own and interleaves them by weight with grain's
`IterDataset.mix` (deterministic; its state keeps every source's position, by
name). `CountTokens` carries the tokens each source has given so far in every
batch (`tokens_seen`, popped by the trainer, which logs `tokens/<name>`) and in
the iterator's saved state, so a resumed run counts on.
"""

import dataclasses
import re

import grain
import ml_collections
import numpy as np

KEYS = ("path", "weight", "format", "field", "name")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_GLOB_CHARS = set("*?[")


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  weight: float
  cfg: ml_collections.ConfigDict  # a data config reading this source alone


def _default_name(path: str) -> str:
  """The last path component without glob characters, without its suffix."""
  parts = [p for p in path.rstrip("/").split("/") if p and not _GLOB_CHARS & set(p)]
  stem = parts[-1].split(".")[0] if parts else ""
  return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem) or "source"


def _entry(data_cfg, i: int, entry) -> Source:
  where = f"data.sources[{i}]"
  if not isinstance(entry, dict):
    raise ValueError(f"{where}={entry!r} must be a dict with keys {', '.join(KEYS)}")
  unknown = sorted(set(entry) - set(KEYS))
  if unknown:
    raise ValueError(f"{where} has unknown keys {unknown}; valid: {', '.join(KEYS)}")
  if not entry.get("path"):
    raise ValueError(f"{where} needs a 'path' (a glob of files or a directory)")
  weight = entry.get("weight", 1.0)
  if not isinstance(weight, (int, float)) or weight < 0:
    raise ValueError(f"{where}['weight']={weight!r} must be a number >= 0")
  name = entry.get("name") or _default_name(entry["path"])
  if not _NAME.fullmatch(name):
    raise ValueError(f"{where}['name']={name!r} may hold only letters, digits, '_', '.', '-'")
  cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  cfg.update(
    path=entry["path"],
    format=entry.get("format", data_cfg.format),
    field=entry.get("field", data_cfg.field),
    sources=(),
  )
  return Source(name, float(weight), cfg)


def sources(data_cfg) -> list[Source]:
  """data.sources checked, with a weight above 0 (a source of weight 0 is left out)."""
  if data_cfg.path:
    raise ValueError(
      f"data.path={data_cfg.path!r} and data.sources are both set; put the path in "
      "data.sources (with a weight) or leave data.sources empty"
    )
  entries = [_entry(data_cfg, i, e) for i, e in enumerate(data_cfg.sources)]
  names = [s.name for s in entries]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"data.sources name {twice[0]!r} twice; give each source a distinct 'name'")
  if not any(s.weight > 0 for s in entries):
    raise ValueError("data.sources weights are all 0; give at least one source a weight > 0")
  return [s for s in entries if s.weight > 0]


def names(data_cfg) -> list[str]:
  """The mixture's source names ([] without data.sources)."""
  return [s.name for s in sources(data_cfg)] if data_cfg.sources else []


def logged(names: list[str], tokens_seen) -> dict:
  """{"tokens/<name>": tokens each source has given so far, all processes' rows}
  ({} without a mixture's tokens_seen)."""
  if tokens_seen is None:
    return {}
  seen = np.asarray(tokens_seen)
  import jax  # noqa: PLC0415 - the pipeline itself needs no jax

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    seen = np.asarray(multihost_utils.process_allgather(seen)).sum(axis=0)
  return {f"tokens/{name}": int(n) for name, n in zip(names, seen)}


def tag(index: int):
  """A row -> the row marked with its source's index (counted by CountTokens)."""
  return lambda row: {**row, "source": np.int32(index)}


class CountTokens(grain.IterDataset):
  """Batches with rows' `source` marks -> batches without them, with
  `tokens_seen` [sources] int64: the tokens (non-padding inputs) each source has
  given in this and every earlier batch."""

  def __init__(self, parent: grain.IterDataset, num_sources: int):
    super().__init__(parent)
    self._num_sources = num_sources

  def __iter__(self):
    return _CountTokensIterator(self._parent.__iter__(), self._num_sources)


class _CountTokensIterator(grain.DatasetIterator):
  def __init__(self, parent, num_sources: int):
    super().__init__(parent)
    self._seen = np.zeros(num_sources, np.int64)

  def __next__(self):
    batch = dict(next(self._parent))
    source = batch.pop("source")
    np.add.at(self._seen, source, np.sum(batch["segment_ids"] != 0, axis=1))
    return {**batch, "tokens_seen": self._seen.copy()}

  def get_state(self):
    return {"parent": self._parent.get_state(), "tokens_seen": self._seen.tolist()}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._seen = np.asarray(state["tokens_seen"], np.int64)
