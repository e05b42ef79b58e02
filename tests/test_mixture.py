"""Specs for weighted mixtures (`data.sources`, trainer/mixture.py): rows follow
the weights through grain's mix, each source keeps its own format and field,
tokens seen per source ride along in every batch and in the metrics, a killed
and resumed run continues every source where it stopped (bitwise losses), and
bad mixtures are one sentence each."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import base
from tests.test_checkpoint import _finish, _kill_when, _train
from trainer import checks, data, data_check, mixture, pipeline

SEQ = 32


def _two_sources(tmp_path) -> tuple[str, str]:
  """Source `letters` (text files of a-e) and `digits` (a Parquet file of 0-4 in
  its column `body`): every token says which source it came from."""
  (tmp_path / "letters").mkdir()
  for i in range(12):
    (tmp_path / "letters" / f"{i}.txt").write_text("abcde " * 40)
  texts = ["01234 " * 40 for _ in range(12)]
  pq.write_table(pa.table({"body": texts}), tmp_path / "digits.parquet", row_group_size=2)
  return str(tmp_path / "letters" / "*.txt"), str(tmp_path / "digits.parquet")


def _cfg(tmp_path, weights=(3, 1)):
  letters, digits = _two_sources(tmp_path)
  cfg = base.get_config().data
  cfg.eval_fraction = 0.2
  cfg.sources = (
    {"path": letters, "weight": weights[0]},
    {"path": digits, "weight": weights[1], "field": "body", "name": "digits"},
  )
  return cfg


def test_rows_follow_the_weights_and_tokens_seen_counts_them(tmp_path):
  cfg = _cfg(tmp_path)
  assert mixture.names(cfg) == ["letters", "digits"]
  ds = pipeline.make_dataset(cfg, split="train", batch_size=8, seq_len=SEQ, seed=0, shards=2)
  rows = {"letters": 0, "digits": 0}
  for _, batch in zip(range(10), ds):
    for row in batch["inputs"]:
      letters = np.isin(row, [*b"abcde ", 256]).all()
      assert letters != np.isin(row, [*b"01234 ", 256]).all()  # one source a row
      rows["letters" if letters else "digits"] += 1
  assert rows == {"letters": 60, "digits": 20}  # 3:1 in every block of 4 rows x 10
  assert batch["tokens_seen"].tolist() == [60 * SEQ, 20 * SEQ]
  assert "source" not in batch
  cfg.eval_fraction = 0.5  # both sources have eval items (by the path hash)
  assert all(data.split_items(c)[1] for c in data.source_configs(cfg))
  evals = pipeline.eval_batches(cfg, batch_size=2, seq_len=SEQ, max_batches=4)
  kinds = [np.isin(b["inputs"][0], [*b"abcde ", 256]).all() for b in evals]
  assert kinds == [True, False, True, False]  # the sources' eval batches in turn


def test_a_weight_of_zero_leaves_the_source_out(tmp_path):
  cfg = _cfg(tmp_path, weights=(1, 0))
  assert mixture.names(cfg) == ["letters"]


@pytest.mark.parametrize(
  "sources,message",
  [
    (({"path": "x", "weight": -1},), r"data.sources\[0\]\['weight'\]=-1 must be a number >= 0"),
    (({"path": "x", "weight": 0}, {"path": "y", "weight": 0}), "weights are all 0"),
    (({"path": "a/x.txt"}, {"path": "b/x.txt"}), "name 'x' twice"),
    (({"path": "x", "wieght": 2},), r"data.sources\[0\] has unknown keys \['wieght'\]"),
    (({"weight": 2},), r"data.sources\[0\] needs a 'path'"),
    (("x.txt",), r"data.sources\[0\]='x.txt' must be a dict"),
  ],
)
def test_bad_mixtures_are_one_sentence(sources, message):
  cfg = base.get_config().data
  cfg.sources = sources
  with pytest.raises(ValueError, match=message):
    mixture.sources(cfg)


def test_missing_empty_or_columnless_sources_fail_before_training(tmp_path):
  from tests.conftest import small_train_config  # noqa: PLC0415

  config = small_train_config("llama3", steps=2)
  config.optim.warmup_steps = 1
  config.data.update(path="", sources=_cfg(tmp_path).sources)
  checks.validate(config)  # the good mixture passes
  config.data.path = "elsewhere/*.txt"
  with pytest.raises(ValueError, match="data.path='elsewhere/.*' and data.sources are both set"):
    checks.validate(config)
  config.data.path = ""
  config.data.sources = (*config.data.sources, {"path": str(tmp_path / "nothing" / "*.txt")})
  with pytest.raises(ValueError, match="nothing/\\*.txt' matches no files"):
    checks.validate(config)
  bad = config.data.sources[1] | {"field": "text"}
  config.data.sources = (config.data.sources[0], bad)
  with pytest.raises(ValueError, match="data.field='text' is not a column of .*digits.parquet"):
    checks.validate(config)
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "a.txt").write_text("")
  config.data.sources = (config.data.sources[0], {"path": str(tmp_path / "empty" / "*.txt")})
  with pytest.raises(ValueError, match="empty/\\*.txt' gave no documents to train on"):
    data_check.check_yields(config.data, batch_size=4, seq_len=SEQ, shards=1, rows=slice(0, 4))
  assert data.source_configs(config.data)[1].path.endswith("*.txt")


def _records(workdir) -> dict[int, dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}


def test_a_killed_mixture_run_resumes_every_source_where_it_stopped(tmp_path):
  """Kill (SIGKILL) a two-source run after step 8 and resume it: per-step losses
  and tokens/<name> equal the uninterrupted run's."""
  cfg = _cfg(tmp_path)
  sources = repr(tuple(dict(s) for s in cfg.sources))
  args = ["--config.train.steps=16", "--config.checkpoint.every=4", f"--config.data.sources={sources}",
          "--config.data.eval_fraction=0.2"]  # fmt: skip
  _finish(_train(tmp_path / "straight", "dense", args))
  straight = _records(tmp_path / "straight")
  assert straight[16]["tokens/letters"] == 3 * straight[16]["tokens/digits"] > 0
  assert all(0 <= r["data_wait"] < 1 for r in straight.values())  # a fraction of wall time
  run = _train(tmp_path / "killed", "dense", args)
  kill_at = random.Random().randint(9, 13)
  _kill_when(run, lambda: max(_records_or_none(tmp_path / "killed"), default=0) >= kill_at)
  assert max(_records(tmp_path / "killed")) < 16, "killed too late to test resume"
  _finish(_train(tmp_path / "killed", "dense", args))
  resumed = _records(tmp_path / "killed")
  assert sorted(resumed) == list(range(1, 17))
  for step in range(1, 17):
    assert resumed[step]["loss"] == straight[step]["loss"], step  # exact
    assert resumed[step]["tokens/digits"] == straight[step]["tokens/digits"], step


def _records_or_none(workdir) -> dict:
  try:
    return _records(workdir)
  except (OSError, ValueError):
    return {}
