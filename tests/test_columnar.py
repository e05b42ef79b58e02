"""Specs for Parquet and Arrow sources (trainer/columnar.py): a row is a document,
files are read a row group / record batch at a time, a Hugging Face
`save_to_disk` directory reads without `datasets`, and a missing or non-text
column is one error before anything compiles."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import small_train_config
from tests.test_data_sources import _cfg, _documents, _eval
from trainer import checks, data, documents, prepare

TEXTS = ["first row", "second: caf\u00e9", None, "", "third \u2603", "fourth", "fifth", "sixth"]
GOOD = [t for t in TEXTS if t]  # None: missing_field; "": empty


def _table(texts=TEXTS):
  return pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string())})


def _save_to_disk(directory, tables) -> str:
  """A directory laid out as `datasets.Dataset.save_to_disk` writes it: Arrow
  stream files listed in state.json, with dataset_info.json beside them."""
  directory.mkdir()
  names = [f"data-{i:05d}-of-{len(tables):05d}.arrow" for i in range(len(tables))]
  for name, table in zip(names, tables):
    with pa.ipc.new_stream(directory / name, table.schema) as writer:
      for batch in table.to_batches(max_chunksize=3):
        writer.write_batch(batch)
  state = {"_data_files": [{"filename": n} for n in names], "_split": None}
  (directory / "state.json").write_text(json.dumps(state))
  (directory / "dataset_info.json").write_text(json.dumps({"features": {}}))
  return str(directory)


def _tokens(texts) -> list[list[int]]:
  return [[*t.encode(), documents.EOS_ID] for t in texts]


def test_parquet_rows_are_documents_read_a_row_group_at_a_time(tmp_path):
  pq.write_table(_table(), tmp_path / "a.parquet", row_group_size=3)
  pq.write_table(_table(["seventh"]), tmp_path / "b.parquet")
  cfg = _cfg(tmp_path / "*.parquet")
  train, evals = data.split_items(cfg)
  assert evals == [(str(tmp_path / "a.parquet"), i) for i in range(3)] + [
    (str(tmp_path / "b.parquet"), 0)
  ]
  skipped = documents.Skipped()
  assert _documents(_eval(cfg, skipped)) == _tokens(GOOD + ["seventh"])
  assert skipped.counts["missing_field"] == 1 and skipped.counts["empty"] == 1
  assert skipped.first["missing_field"] == f"{tmp_path / 'a.parquet'}:3"  # row 3 of the file
  assert skipped.first["empty"] == f"{tmp_path / 'a.parquet'}:4"
  # The train split moves row groups: some of a file's groups go to eval.
  split = data.split_items(_cfg(tmp_path / "*.parquet", eval_fraction=0.5))
  assert sorted(split[0] + split[1]) == sorted(evals)


def test_a_save_to_disk_directory_and_arrow_files_read_without_datasets(tmp_path):
  directory = _save_to_disk(tmp_path / "ds", [_table(), _table(["seventh"])])
  assert _documents(_eval(_cfg(directory))) == _tokens(GOOD + ["seventh"])
  # An Arrow IPC *file* (random access) by glob, with the column named by data.field.
  table = pa.table({"body": ["one", "two"]})
  with pa.ipc.new_file(tmp_path / "x.arrow", table.schema) as writer:
    writer.write_table(table)
  assert _documents(_eval(_cfg(tmp_path / "x.arrow", field="body"))) == _tokens(["one", "two"])
  (tmp_path / "dd").mkdir()
  (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
  with pytest.raises(ValueError, match=r"is a Hugging Face DatasetDict; .* \(train, test\)"):
    data.split_items(_cfg(tmp_path / "dd"))


def test_a_missing_or_non_text_column_fails_the_config_check(tmp_path):
  pq.write_table(_table(), tmp_path / "a.parquet")
  config = small_train_config("llama3", steps=2)
  config.optim.warmup_steps = 1
  config.data.path = str(tmp_path / "a.parquet")
  config.data.field = "body"
  with pytest.raises(ValueError, match=r"data.field='body' is not a column of .*a.parquet \(its "):
    checks.validate(config)
  config.data.field = "id"
  with pytest.raises(ValueError, match="data.field='id' in .* holds int64, not text"):
    checks.validate(config)
  (tmp_path / "bad.parquet").write_bytes(b"not parquet")
  config.data.update(path=str(tmp_path / "bad.parquet"), field="text")
  with pytest.raises(ValueError, match="is not a readable parquet file"):
    checks.validate(config)


def test_prepare_tokenizes_parquet_rows(tmp_path):
  pq.write_table(_table(), tmp_path / "a.parquet", row_group_size=3)
  cfg = _cfg(tmp_path / "a.parquet")
  meta = prepare.prepare(cfg, tmp_path / "prep", num_shards=1, workers=1, progress=False)
  assert meta["splits"]["eval"]["documents"] == len(GOOD)
  assert meta["skipped"]["missing_field"] == 1 and meta["skipped"]["empty"] == 1
  assert sorted(_documents(_eval(_cfg(tmp_path / "prep")))) == sorted(_tokens(GOOD))


def test_a_short_run_trains_on_parquet(tmp_path):
  from trainer.trainer import Trainer  # noqa: PLC0415

  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta"], 40)) for _ in range(60)]
  pq.write_table(_table(texts), tmp_path / "a.parquet", row_group_size=5)
  config = small_train_config("llama3", steps=2, log_every=1, eval_batches=1)
  config.optim.warmup_steps = 1
  config.data.update(path=str(tmp_path / "a.parquet"), eval_fraction=0.3)
  run = Trainer(config, str(tmp_path / "run")).run()
  assert np.isfinite(run["eval"]["eval_loss"])


def test_data_path_takes_a_comma_separated_list_of_files_and_globs(tmp_path):
  pq.write_table(_table(["p one", "p two"]), tmp_path / "a.parquet")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.txt").write_text("text file")
  (tmp_path / "sub" / "c.txt").write_text("another")
  cfg = _cfg(f"{tmp_path / 'a.parquet'}, {tmp_path / 'sub' / '*.txt'}")
  assert _documents(_eval(cfg)) == _tokens(["p one", "p two", "text file", "another"])


def test_uri_paths_read_through_pyarrow_filesystems(tmp_path):
  """data.path as a URI (file:// here; gs://, s3://, hdfs:// go the same way
  through pyarrow.fs): globbed (** too), split, read and prepared like local paths."""
  pq.write_table(_table(["p one", "p two"]), tmp_path / "a.parquet")
  (tmp_path / "sub" / "deep").mkdir(parents=True)
  (tmp_path / "sub" / "b.txt").write_text("text file")
  (tmp_path / "sub" / "deep" / "c.txt").write_text("another")
  (tmp_path / "sub" / "deep" / "d.jsonl").write_text('{"text": "a record"}\n')
  uri = f"file://{tmp_path}"
  local = _documents(_eval(_cfg(f"{tmp_path}/**/*.txt")))
  assert _documents(_eval(_cfg(f"{uri}/**/*.txt"))) == local == _tokens(["text file", "another"])
  cfg = _cfg(f"{uri}/a.parquet,{uri}/sub/deep/*.jsonl")
  assert data.split_items(cfg)[1][0] == (f"{uri}/a.parquet", 0)
  assert _documents(_eval(cfg)) == _tokens(["p one", "p two", "a record"])
  # The eval split hashes paths relative to the root: the same split as local paths.
  split = lambda p: [len(s) for s in data.split_items(_cfg(p, eval_fraction=0.5))]  # noqa: E731
  assert split(f"{uri}/**/*.txt") == split(f"{tmp_path}/**/*.txt")
  with pytest.raises(ValueError, match="matches no files"):
    data.split_items(_cfg(f"{uri}/nothing/*.txt"))
  _save_to_disk(tmp_path / "ds", [_table(["an arrow row"])])  # Arrow (stream) through the URI
  assert _documents(_eval(_cfg(f"{uri}/ds/*.arrow"))) == _tokens(["an arrow row"])
