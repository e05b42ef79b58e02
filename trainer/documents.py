"""What a document is: how a text or JSONL file (or a Parquet / Arrow row,
trainer/columnar.py) becomes documents, their tokenizer, and the input skipped
on the way.

Tokenizers (`data.tokenizer`): `byte` (UTF-8 bytes 0..255, EOS 256) or a local
`tokenizer.json` (the `tokenizers` package); a document is its tokens, with the
special tokens the tokenizer's own post-processor adds (a BOS such as Llama 3's
<|begin_of_text|>), followed by EOS. Input that cannot be a document is skipped and counted by reason
(`Skipped`): empty files or texts, invalid UTF-8, JSONL lines that are not JSON,
records or rows without a string `data.field`.
"""

import functools
import hashlib
import json
import os
import pathlib
import threading

import numpy as np

from trainer import columnar, paths

EOS_ID = 256
BYTE_VOCAB_SIZE = 257
SKIP_REASONS = ("empty", "invalid_utf8", "bad_json", "missing_field")
_JSONL_SUFFIXES = (".jsonl", ".json")
# tokenizer.json end-of-text tokens tried, in order, when data.eos_token is "".
_EOS_TOKENS = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


# --------------------------------------------------------------- tokenizers


class Tokenizer:
  """`byte` or a local tokenizer.json: text -> int32 ids with EOS appended."""

  def __init__(self, spec: str, eos_token: str = ""):
    self.spec, self._hf = spec, None
    if spec == "byte":
      self.vocab_size, self.eos_id, self.fingerprint = BYTE_VOCAB_SIZE, EOS_ID, "byte"
      return
    path = pathlib.Path(os.path.expanduser(spec))
    if not path.is_file():
      raise ValueError(
        f"data.tokenizer={spec!r} is neither 'byte' nor an existing tokenizer.json file"
      )
    import tokenizers  # noqa: PLC0415 - only runs that use a tokenizer.json need it

    try:
      self._hf = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception
      raise ValueError(
        f"data.tokenizer={spec!r} does not parse as a tokenizer.json ({e}); point it at the "
        "tokenizer.json of a Hugging Face tokenizer"
      ) from e
    self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
    self.fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    candidates = [eos_token] if eos_token else _EOS_TOKENS
    found = [t for t in candidates if self._hf.token_to_id(t) is not None]
    if not found:
      wanted = f"data.eos_token={eos_token!r}" if eos_token else f"any of {', '.join(_EOS_TOKENS)}"
      raise ValueError(
        f"{spec} has no {wanted}; set data.eos_token to the tokenizer's end-of-text token"
      )
    self.eos_id = self._hf.token_to_id(found[0])

  def encode(self, text: str, raw: bytes | None = None) -> np.ndarray:
    """Token ids of `text` (its UTF-8 bytes `raw`, if at hand) followed by EOS."""
    if self._hf is None:
      raw = text.encode("utf-8") if raw is None else raw
      return self._ended(np.frombuffer(raw, np.uint8))
    # With the special tokens the tokenizer's own post-processor adds (Llama 3's
    # <|begin_of_text|> first, Gemma's <bos>); EOS ends the document once.
    return self._ended(self._hf.encode(text).ids)

  def encode_many(self, texts: list[str]) -> list[np.ndarray]:
    """encode of each text; a tokenizer.json encodes them as one batch, in
    parallel outside the GIL (a JSONL file's or a row group's documents)."""
    if self._hf is None or len(texts) < 2:
      return [self.encode(t) for t in texts]
    return [self._ended(e.ids) for e in self._hf.encode_batch(texts)]

  def _ended(self, ids) -> np.ndarray:
    """int32 ids with one EOS last (a post-processor's own EOS is not doubled)."""
    ids = ids[:-1] if len(ids) and self._hf is not None and ids[-1] == self.eos_id else ids
    tokens = np.empty(len(ids) + 1, np.int32)
    tokens[:-1] = ids
    tokens[-1] = self.eos_id
    return tokens

  def ids(self, text: str) -> list[int]:
    """Token ids of `text` without EOS (a prompt)."""
    return self.encode(text)[:-1].tolist()

  def decode(self, ids) -> str:
    """The text of token ids; EOS and other special tokens are left out (invalid
    UTF-8 from a byte model shows as U+FFFD)."""
    if self._hf is None:
      return bytes(int(i) for i in ids if i < 256).decode("utf-8", errors="replace")
    return self._hf.decode([int(i) for i in ids], skip_special_tokens=True)


@functools.cache
def tokenizer(spec: str, eos_token: str = "") -> Tokenizer:
  return Tokenizer(spec, eos_token)


def data_tokenizer(data_cfg) -> Tokenizer:
  return tokenizer(data_cfg.tokenizer, data_cfg.eos_token)


# ---------------------------------------------------------- skipped input


class BadRecord(ValueError):
  """A JSONL record that does not parse, with data.skip_bad_records off."""


class Skipped:
  """Counts of skipped input by reason, with the first place (in input order)
  each was seen. Each place (file, or file:line) counts once, however many
  epochs re-read it. Thread-safe: grain reads files on several threads, so
  `first` keeps the earliest (path, line), not the first reported."""

  def __init__(self, strict: bool = False):
    self.strict = (
      strict  # records that do not parse raise BadRecord instead (data.skip_bad_records)
    )
    self._lock = threading.Lock()
    self._seen = set()
    self._first_at = {}  # reason -> (path, line) of the earliest place
    self.counts = dict.fromkeys(SKIP_REASONS, 0)
    self.places = []  # (reason, path, line) of each place, in the order added
    self.first = {}

  def add(self, reason: str, path: str, line: int = 0):
    """One skipped file (line 0) or JSONL line (1-based)."""
    where = f"{path}:{line}" if line else path
    if self.strict and (reason == "bad_json" or (reason == "invalid_utf8" and line)):
      what = "not JSON" if reason == "bad_json" else "not UTF-8"
      raise BadRecord(
        f"{where} is {what}; fix the record, or set data.skip_bad_records=True to skip and "
        "count such records"
      )
    with self._lock:
      if where in self._seen:
        return
      self._seen.add(where)
      self.places.append((reason, path, line))
      self.counts[reason] += 1
      if reason not in self._first_at or (path, line) < self._first_at[reason]:
        self._first_at[reason] = (path, line)
        self.first[reason] = where

  def merge(self, counts: dict, first: dict):
    """Adds another Skipped's counts (e.g. from a worker process); callers merge
    in input order, so an already-known first place is kept."""
    with self._lock:
      for reason, n in counts.items():
        self.counts[reason] += n
      for reason, where in first.items():
        if reason not in self.first:
          self.first[reason] = where
          self._first_at[reason] = ("", 0)  # earlier than any later add

  def total(self) -> int:
    return sum(self.counts.values())

  def summary(self) -> str:
    """e.g. "2 invalid_utf8 (first: a.txt), 1 empty (first: b.txt)"; "" if none."""
    return ", ".join(
      f"{n} {reason} (first: {self.first[reason]})" for reason, n in self.counts.items() if n
    )


def _decode(raw: bytes, skipped: Skipped, path: str, line: int = 0) -> str | None:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    skipped.add("invalid_utf8", path, line)
    return None


def _jsonl_texts(raw: bytes, path: str, field: str, skipped: Skipped):
  for number, line in enumerate(raw.splitlines(), 1):
    if not line.strip():
      continue  # blank lines hold no record
    text = _decode(line, skipped, path, number)
    if text is None:
      continue
    try:
      record = json.loads(text)
    except json.JSONDecodeError:
      skipped.add("bad_json", path, number)
      continue
    value = record.get(field) if isinstance(record, dict) else None
    if not isinstance(value, str):
      skipped.add("missing_field", path, number)
    elif not value:
      skipped.add("empty", path, number)
    else:
      yield value


def _column_texts(item, fmt: str, field: str, skipped: Skipped):
  first, values = columnar.read(item, fmt, field)
  for row, value in enumerate(values, first + 1):
    if not isinstance(value, str):
      skipped.add("missing_field", item[0], row)
    elif not value:
      skipped.add("empty", item[0], row)
    else:
      yield value


def read_documents(item, fmt: str, field: str, tok: Tokenizer, skipped: Skipped) -> list:
  """One item -> its documents' token arrays (int32, EOS last): a text or JSONL
  file, or (path, unit) of a Parquet / Arrow file (trainer/columnar.py; skipped
  rows are counted at path:row)."""
  if isinstance(item, tuple):
    fmt = file_format(item[0], fmt)
    return tok.encode_many(list(_column_texts(item, fmt, field, skipped)))
  path = str(item)
  raw = paths.read_bytes(path)
  if file_format(path, fmt) == "jsonl":
    return tok.encode_many(list(_jsonl_texts(raw, path, field, skipped)))
  if not raw:
    skipped.add("empty", path)
    return []
  text = _decode(raw, skipped, path)
  return [] if text is None else [tok.encode(text, raw)]


def file_format(path, fmt: str) -> str:
  """text | jsonl | parquet | arrow for one input file (`auto`: by its suffix:
  .jsonl / .json, .parquet, .arrow; else text)."""
  if fmt == "auto":
    suffix = pathlib.Path(path).suffix
    return "jsonl" if suffix in _JSONL_SUFFIXES else columnar.SUFFIXES.get(suffix, "text")
  return fmt
