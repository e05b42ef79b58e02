"""Before training: does the data give anything? (A source that yields no
documents would otherwise be repeated forever, waiting for a first batch.)

`check_yields` reads each train block's files in order until it has one batch's
worth of tokens for that block (cheap: a file or two of a real corpus) and
raises one sentence naming the files and why they gave nothing; a corpus
smaller than one batch, or without an eval split, is a warning.
"""

from trainer import data
from trainer.documents import Skipped, data_tokenizer, read_documents

_PHRASES = {
  "empty": "is empty",
  "invalid_utf8": "is not UTF-8 text (binary?)",
  "bad_json": "has lines that are not JSON",
  "missing_field": "has no record with a string under the field",
}


def _why(files: list, skipped: Skipped, field: str) -> str:
  if len(files) > 1:
    return f"none of its {len(files)} files gave text ({skipped.summary() or 'no text'})"
  reasons = [r for r, n in skipped.counts.items() if n] or ["empty"]
  phrases = [_PHRASES[r] + (f" {field!r}" if r == "missing_field" else "") for r in reasons]
  return f"{files[0]} " + " and ".join(phrases)


def _tokens(data_cfg, files: list, want: int) -> tuple[int, Skipped]:
  """Tokens the files give, reading in order and stopping at `want`."""
  tok, total = data_tokenizer(data_cfg), 0
  skipped = Skipped(strict=not data_cfg.skip_bad_records)
  for path in files:
    for doc in read_documents(path, data_cfg.format, data_cfg.field, tok, skipped):
      total += len(doc)
    if total >= want:
      break
  return total, skipped


def check_yields(data_cfg, *, batch_size: int, seq_len: int, shards: int, rows: slice,
                 warn=print):  # fmt: skip
  """ValueError if a train block this process reads gives no document (of any
  source of a mixture); warnings for a corpus smaller than one batch and a
  missing eval split."""
  for cfg in data.source_configs(data_cfg):
    _check_source(cfg, batch_size, seq_len, shards, rows, warn)


def _check_source(data_cfg, batch_size: int, seq_len: int, shards: int, rows: slice, warn):
  train, evals = data.split_items(data_cfg)
  where = f"data.path={data_cfg.path!r}"
  if not train:
    if evals and data_cfg.eval_fraction > 0 and not data.is_prepared(data_cfg):
      raise ValueError(
        f"data.eval_fraction={data_cfg.eval_fraction} puts all {len(evals)} files of {where} "
        "in the eval split, leaving nothing to train on; lower data.eval_fraction"
      )
    raise ValueError(f"{where} has no train input; add train data")
  if data.is_prepared(data_cfg):
    return  # records are token arrays written by prepare_data.py; shards are checked later
  block = batch_size // shards
  short = []
  for j in range(rows.start // block, rows.stop // block):
    files = train[j::shards]
    if not files:
      continue  # too few files for data.shards: make_dataset says so
    got, skipped = _tokens(data_cfg, files, block * (seq_len + 1))
    if got == 0:
      shard = f" (data shard {j} of data.shards={shards})" if shards > 1 else ""
      raise ValueError(
        f"{where} gave no documents to train on{shard}: {_why(files, skipped, data_cfg.field)}; "
        f"point data.path at text, or at JSONL records with a string field "
        f"data.field={data_cfg.field!r}"
      )
    if got < block * (seq_len + 1):
      short.append(got)
  if short:
    warn(f"warning: {where} holds {sum(short)} tokens, less than one batch "
         f"(train.batch_size x (train.seq_len + 1) = {batch_size * (seq_len + 1)}): "
         "every batch repeats the same documents")  # fmt: skip
  if not evals:
    warn(f"warning: {where} has no eval split (data.eval_fraction={data_cfg.eval_fraction} "
         f"selects none of its {len(train)} files): no held-out loss will be reported")  # fmt: skip
