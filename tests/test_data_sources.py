"""Specs for the data sources: JSONL and text globs with skipped-input counts, a
local tokenizer.json, and tokenized ArrayRecord directories from prepare_data.py."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tokenizers

from configs import base
from tests.conftest import ROOT, small_train_config
from trainer import data, documents, pipeline, prepare
from trainer.trainer import Trainer

GOOD = ["first record", "second: caf\u00e9", "third \u2603", "fourth"]


def _cfg(path, **kw):
  cfg = base.get_config().data
  # eval: every file, in order; bad records counted (the tests of skipping)
  cfg.update(dict(path=str(path), eval_fraction=1.0, skip_bad_records=True) | kw)
  return cfg


def _mixed_inputs(tmp_path):
  """Good documents (GOOD, in file order) among every kind of bad input."""
  lines = [
    json.dumps({"text": GOOD[0], "id": 1}),
    "",  # blank: not a record
    "{not json",
    json.dumps({"body": "no text key"}),
    json.dumps({"text": 7}),
    json.dumps({"text": ""}),
    json.dumps({"text": GOOD[1]}),
  ]
  (tmp_path / "a.jsonl").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")
  (tmp_path / "b.txt").write_text(GOOD[2])
  (tmp_path / "c.txt").write_bytes(b"")
  (tmp_path / "d.txt").write_bytes(b"latin-1 \xe9t\xe9")
  (tmp_path / "e.jsonl").write_text(json.dumps({"text": GOOD[3]}) + "\n")
  return tmp_path / "*"


def _documents(batches) -> list[list[int]]:
  """Token lists of the documents in batches (rows in order, split at EOS); the
  tests keep every document inside one row (a row's last token is not an input)."""
  flat = np.concatenate([b["inputs"][b["segment_ids"] != 0] for b in batches])
  return [list(d) for d in np.split(flat, np.flatnonzero(flat == documents.EOS_ID) + 1) if d.size]


def _eval(cfg, skipped=None):
  kw = dict(batch_size=2, seq_len=512, max_batches=100, skipped=skipped)
  return pipeline.eval_batches(cfg, **kw)


def test_jsonl_and_text_documents_are_read_and_bad_input_is_counted(tmp_path):
  skipped = documents.Skipped()
  docs = _documents(_eval(_cfg(_mixed_inputs(tmp_path)), skipped))
  assert docs == [[*g.encode(), documents.EOS_ID] for g in GOOD]
  assert skipped.counts == {"empty": 2, "invalid_utf8": 2, "bad_json": 1, "missing_field": 2}
  assert skipped.first["bad_json"] == f"{tmp_path / 'a.jsonl'}:3"
  assert skipped.first["invalid_utf8"] == f"{tmp_path / 'a.jsonl'}:8"
  assert skipped.first["empty"] == f"{tmp_path / 'a.jsonl'}:6"
  assert "2 missing_field (first: " in skipped.summary()


def test_skipped_keeps_the_earliest_place_whatever_order_threads_report_it():
  skipped = documents.Skipped()
  for path, line in [("d.txt", 0), ("a.jsonl", 10), ("a.jsonl", 8), ("a.jsonl", 8)]:
    skipped.add("invalid_utf8", path, line)
  assert skipped.counts["invalid_utf8"] == 3
  assert skipped.first["invalid_utf8"] == "a.jsonl:8"


def test_the_jsonl_field_is_configurable_and_format_can_be_forced(tmp_path):
  (tmp_path / "x.data").write_text(json.dumps({"content": "hello"}) + "\n")
  docs = _documents(_eval(_cfg(tmp_path / "x.data", format="jsonl", field="content")))
  assert docs == [[*b"hello", documents.EOS_ID]]
  skipped = documents.Skipped()
  assert _eval(_cfg(tmp_path / "x.data", format="jsonl"), skipped) == []
  assert skipped.counts["missing_field"] == 1


def _tokenizer_json(tmp_path) -> str:
  """A small local BPE tokenizer.json with an <|endoftext|> token (trained here)."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=300,
    special_tokens=["[UNK]", "<|endoftext|>"],
    initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator(GOOD * 20 + ["def f(x):\n    return x + 1\n"] * 20, trainer)
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  return str(path)


def test_a_local_tokenizer_json_tokenizes_and_ends_documents_with_its_eos(tmp_path):
  path = _tokenizer_json(tmp_path)
  hf = tokenizers.Tokenizer.from_file(path)
  eos = hf.token_to_id("<|endoftext|>")
  (tmp_path / "in").mkdir()
  for i, text in enumerate(GOOD):
    (tmp_path / "in" / f"{i}.txt").write_text(text)
  cfg = _cfg(tmp_path / "in" / "*.txt", tokenizer=path)
  flat = np.concatenate([b["inputs"][b["segment_ids"] != 0] for b in _eval(cfg)])
  want = np.concatenate([hf.encode(g, add_special_tokens=False).ids + [eos] for g in GOOD])
  np.testing.assert_array_equal(flat, want)
  assert documents.data_tokenizer(cfg).vocab_size == hf.get_vocab_size()
  with pytest.raises(ValueError, match="data.eos_token='<eos>'"):
    data.check(_cfg(tmp_path / "in" / "*.txt", tokenizer=path, eos_token="<eos>"))
  with pytest.raises(ValueError, match="data.tokenizer='nope.json'"):
    data.check(_cfg(tmp_path / "in" / "*.txt", tokenizer="nope.json"))
  (tmp_path / "broken.json").write_text("{not a tokenizer")
  with pytest.raises(ValueError, match="broken.json' does not parse as a tokenizer.json"):
    data.check(_cfg(tmp_path / "in" / "*.txt", tokenizer=str(tmp_path / "broken.json")))


def test_prepared_arrayrecord_holds_the_same_documents_as_the_raw_files(tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  raw = _mixed_inputs(inputs)
  for i in range(12):  # enough train files for several shards
    (inputs / f"t{i:02d}.jsonl").write_text(json.dumps({"text": f"train doc {i}"}) + "\n")
  cfg = _cfg(raw, eval_fraction=0.3)
  meta = prepare.prepare(cfg, tmp_path / "prep", num_shards=3, workers=2, progress=False)
  assert meta["skipped"] == {"empty": 2, "invalid_utf8": 2, "bad_json": 1, "missing_field": 2}
  files, root = data.resolve_files(cfg)
  train_files, eval_files = data.split_files(files, root, 0.3)
  expect = {}
  for split, split_files in (("train", train_files), ("eval", eval_files)):
    tok = documents.data_tokenizer(cfg)
    docs = [
      d
      for f in split_files
      for d in documents.read_documents(f, "auto", "text", tok, documents.Skipped())
    ]
    expect[split] = sorted(map(list, docs))
    assert meta["splits"][split]["documents"] == len(docs)
  prepared = _cfg(tmp_path / "prep")
  assert sorted(_documents(_eval(prepared))) == expect["eval"]
  # Train: record shards j::2 read by two row blocks are disjoint and cover the split.
  seen = []
  for j in (0, 1):
    ds = pipeline.make_dataset(
      prepared, split="train", batch_size=2, seq_len=512, seed=0, shards=2, rows=slice(j, j + 1)
    )
    batch = next(iter(ds))
    # The row wraps into the next epoch: keep the complete documents.
    seen.append({tuple(d) for d in _documents([batch]) if d[-1] == documents.EOS_ID})
  assert not seen[0] & seen[1]
  assert sorted(map(list, seen[0] | seen[1])) == expect["train"]
  with pytest.raises(ValueError, match="was tokenized with 'byte', not data.tokenizer="):
    data.check(_cfg(tmp_path / "prep", tokenizer=_tokenizer_json(tmp_path)))
  with pytest.raises(ValueError, match="is not empty; prepare into a new directory"):
    prepare.prepare(cfg, tmp_path / "prep", progress=False)


def test_training_reads_a_prepared_directory_and_reports_skipped_input(tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  _mixed_inputs(inputs)
  for i in range(20):
    (inputs / f"t{i:02d}.txt").write_text(f"training text number {i} " * 20)
  out = tmp_path / "prep"
  cmd = [sys.executable, "scripts/prepare_data.py", f"--path={inputs}/*", f"--out={out}",
         "--skip_bad_records"]  # fmt: skip
  result = subprocess.run(cmd + ["--workers=2"], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "MB/s" in result.stdout and "skipped: 2 empty" in result.stdout
  # Raw input: the run counts and reports what it skipped; prepared input trains too.
  for path in (f"{inputs}/*", str(out)):
    config = small_train_config("llama3", steps=4, log_every=2, eval_batches=1)
    config.optim.warmup_steps = 1
    config.data.update(path=path, eval_fraction=0.3, skip_bad_records=True)
    workdir = tmp_path / ("raw" if "*" in path else "prepared")
    trainer = Trainer(config, str(workdir))
    trainer.run()
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [2, 4] and np.isfinite(train[-1]["loss"])
    reported = {k[len("skipped_") :]: v for k, v in train[-1].items() if k.startswith("skipped_")}
    assert reported == {r: n for r, n in trainer.skipped.counts.items() if n}
    if "*" in path:  # what the run read of the mixed input: some, never more than there is
      everything = {"empty": 2, "invalid_utf8": 2, "bad_json": 1, "missing_field": 2}
      assert reported and all(n <= everything[r] for r, n in reported.items())
    else:
      assert not any(k.startswith("skipped_") for k in train[-1])


def test_a_record_that_does_not_parse_is_an_error_unless_skipped(tmp_path):
  """data.skip_bad_records=False (the default): a JSONL line that is not JSON is
  one error naming file and line, before training (check_yields), while reading
  (a strict Skipped) and while preparing; True skips and counts it."""
  from trainer import data_check  # noqa: PLC0415

  (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"text": "also fine"}\n{not json\n')
  cfg = _cfg(tmp_path / "a.jsonl", skip_bad_records=False, eval_fraction=0.0)
  message = r"a.jsonl:3 is not JSON; fix the record, or set data.skip_bad_records=True"
  with pytest.raises(ValueError, match=message):
    data_check.check_yields(cfg, batch_size=2, seq_len=64, shards=1, rows=slice(0, 2))
  cfg.eval_fraction = 1.0
  with pytest.raises(ValueError, match=message):
    _eval(cfg, documents.Skipped(strict=True))
  with pytest.raises(ValueError, match=message):
    prepare.prepare(cfg, tmp_path / "prep", workers=1, progress=False)
  cfg.skip_bad_records = True
  skipped = documents.Skipped(strict=False)
  assert len(_documents(_eval(cfg, skipped))) == 2 and skipped.counts["bad_json"] == 1


def test_a_tokenizer_json_adds_its_own_bos_and_documents_end_with_one_eos(tmp_path):
  """The tokenizer's post-processor decides the specials (Llama 3 puts
  <|begin_of_text|> first); EOS ends each document once, even when the
  post-processor adds it too."""
  path = _tokenizer_json(tmp_path)
  hf = tokenizers.Tokenizer.from_file(path)
  hf.add_special_tokens(["<|begin_of_text|>"])
  bos, eos = hf.token_to_id("<|begin_of_text|>"), hf.token_to_id("<|endoftext|>")
  plain = hf.encode("def f(x):", add_special_tokens=False).ids
  for template, first in (("<|begin_of_text|> $A", [bos]), ("$A <|endoftext|>", [])):
    hf.post_processor = tokenizers.processors.TemplateProcessing(
      single=template, special_tokens=[("<|begin_of_text|>", bos), ("<|endoftext|>", eos)]
    )
    hf.save(str(tmp_path / "t.json"))
    tok = documents.Tokenizer(str(tmp_path / "t.json"))
    assert tok.encode("def f(x):").tolist() == first + plain + [eos]
    assert tok.decode(tok.ids("def f(x):")) == "def f(x):"


def test_worker_processes_read_and_tokenize_what_the_main_process_would(tmp_path):
  """data.workers=2: the same documents and skipped counts as reading here (the
  workers' share of the items interleaves, so the order may differ); the train
  stream is deterministic and resumes from a saved state; a bad record raised in
  a worker reaches the caller as itself."""
  raw = _mixed_inputs(tmp_path)
  for i in range(6):
    (tmp_path / f"t{i}.txt").write_text(f"train doc {i} " * 20)
  whole = dict(batch_size=1, seq_len=8192, max_batches=4)  # every document inside one row
  got = {}
  for workers in (0, 2):
    skipped = documents.Skipped()
    batches = pipeline.eval_batches(_cfg(raw, workers=workers), skipped=skipped, **whole)
    got[workers] = (sorted(_documents(batches)), skipped.counts)
  assert got[2] == got[0]
  cfg = _cfg(raw, workers=2, eval_fraction=0.0)
  ds = pipeline.make_dataset(cfg, split="train", batch_size=2, seq_len=64, seed=0)
  it = iter(ds)
  first = [next(it)["inputs"] for _ in range(3)]
  state = it.get_state()
  after = [next(it)["inputs"] for _ in range(3)]
  again = iter(ds)
  assert all((b == next(again)["inputs"]).all() for b in first)
  resumed = iter(ds)
  resumed.set_state(state)
  assert all((b == next(resumed)["inputs"]).all() for b in after)
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "a.jsonl").write_text('{"text": "fine"}\n{not json\n')
  with pytest.raises(documents.BadRecord, match=r"a.jsonl:2 is not JSON"):
    pipeline.eval_batches(_cfg(tmp_path / "bad" / "*", workers=2),
                          skipped=documents.Skipped(strict=True), **whole)  # fmt: skip
