"""Specs for trainer/data.py: file lists, splits and packed byte batches."""

import itertools
import json
import pathlib
import sysconfig

import numpy as np
import pytest

from configs import base
from trainer import data, documents, pipeline


def _cfg(path="", eval_fraction=0.02, tokenizer="byte", **kw):
  cfg = base.get_config().data
  cfg.update(dict(path=path, tokenizer=tokenizer, eval_fraction=eval_fraction, **kw))
  return cfg


def _first_batches(cfg, n, *, split="train", seed=0, batch_size=2, seq_len=64, **kw):
  ds = pipeline.make_dataset(
    cfg, split=split, batch_size=batch_size, seq_len=seq_len, seed=seed, **kw
  )
  return list(itertools.islice(iter(ds), n))


def _write_docs(tmp_path, docs: dict[str, bytes]):
  for name, content in docs.items():
    (tmp_path / name).write_bytes(content)
  return str(tmp_path / "*.txt")


def _complete_docs(batch) -> set[bytes]:
  """Documents that start and end (EOS) inside a row of the batch."""
  docs = set()
  for row in batch["inputs"]:
    ends = np.flatnonzero(row == documents.EOS_ID)
    for start, end in zip(ends[:-1] + 1, ends[1:]):
      docs.add(bytes(row[start:end].astype(np.uint8)))
  return docs


@pytest.fixture(scope="module")
def stdlib_batch():
  # Unshuffled: the first rows are consecutive, so they cross document ends.
  return _first_batches(_cfg(shuffle_tokens=0), 1, batch_size=8, seq_len=256)[0]


@pytest.fixture(scope="module")
def padded_batch(tmp_path_factory):
  """One eval batch over three short documents, with padding at the end."""
  tmp = tmp_path_factory.mktemp("short")
  glob = _write_docs(tmp, {"a.txt": b"hello\n", "b.txt": b"x" * 40, "c.txt": b"bye"})
  return _first_batches(_cfg(glob, eval_fraction=1.0), 1, split="eval", batch_size=4, seq_len=16)[0]


def test_default_corpus_is_sorted_stdlib_without_installed_packages():
  files = data.default_corpus_files()
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  rel = [f.relative_to(root).as_posix() for f in files]
  assert len(files) > 100
  assert rel == sorted(rel)
  assert all(f.suffix == ".py" for f in files)
  assert not any({"site-packages", "dist-packages"} & set(f.parts) for f in files)


def test_split_is_by_file_disjoint_deterministic_and_eval_nonempty():
  files, root = data.resolve_files(_cfg())
  train, evals = data.split_files(files, root, 0.02)
  assert evals and train
  assert not set(train) & set(evals)
  assert sorted(train + evals) == sorted(files)
  # The split depends only on each file's own path: not on order or the other files.
  assert (train, evals) == data.split_files(files, root, 0.02)
  assert data.split_files(files[::-1], root, 0.02) == (train[::-1], evals[::-1])
  assert data.split_files(evals, root, 0.02) == ([], evals)
  assert data.split_files(files, root, 0.0)[1] == []


def test_batch_has_contract_shapes_and_dtypes(stdlib_batch):
  int_keys = ("inputs", "targets", "segment_ids", "positions")
  assert set(stdlib_batch) == {*int_keys, "weights"}
  for k in int_keys:
    assert stdlib_batch[k].shape == (8, 256) and stdlib_batch[k].dtype == np.int32
  assert stdlib_batch["weights"].shape == (8, 256) and stdlib_batch["weights"].dtype == np.float32
  assert stdlib_batch["inputs"].max() < documents.BYTE_VOCAB_SIZE


@pytest.mark.parametrize("batch", ["stdlib_batch", "padded_batch"])
def test_targets_are_inputs_shifted_by_one_within_a_row(batch, request):
  b = request.getfixturevalue(batch)
  np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])


@pytest.mark.parametrize("batch", ["stdlib_batch", "padded_batch"])
def test_weights_zero_exactly_where_target_crosses_a_document_or_is_padding(batch, request):
  b = request.getfixturevalue(batch)
  # Every document ends with EOS, so an EOS input is the last token of its document.
  same_doc = (b["inputs"] != documents.EOS_ID) & (b["segment_ids"] != 0)
  np.testing.assert_array_equal(b["weights"], same_doc.astype(np.float32))
  assert (b["weights"] == 0).any() and (b["weights"] == 1).any()


@pytest.mark.parametrize("batch", ["stdlib_batch", "padded_batch"])
def test_positions_restart_at_zero_at_each_new_segment(batch, request):
  b = request.getfixturevalue(batch)
  seg, pos = b["segment_ids"], b["positions"]
  new_segment = np.ones_like(seg, bool)
  new_segment[:, 1:] = seg[:, 1:] != seg[:, :-1]
  real = seg != 0
  assert (pos[new_segment & real] == 0).all()
  cont = ~new_segment & real
  assert (pos[:, 1:][cont[:, 1:]] == pos[:, :-1][cont[:, 1:]] + 1).all()


@pytest.mark.parametrize("batch", ["stdlib_batch", "padded_batch"])
def test_segment_ids_count_up_from_one_along_a_row_then_padding(batch, request):
  b = request.getfixturevalue(batch)
  for row in b["segment_ids"]:
    real = row[row != 0]
    assert real.size == 0 or real[0] == 1
    assert set(np.diff(real)) <= {0, 1}
    assert (row[real.size :] == 0).all()  # padding only at the end


def test_inputs_decode_to_the_exact_bytes_of_the_files_separated_by_eos(tmp_path):
  docs = {"a.txt": b"first file\n", "b.txt": "caf\u00e9 \x00 \u2603".encode(), "c.txt": b"third"}
  cfg = _cfg(_write_docs(tmp_path, docs), eval_fraction=1.0)  # eval: one pass, in order
  (batch,) = _first_batches(cfg, 1, split="eval", batch_size=1, seq_len=64)
  tokens = batch["inputs"][0][batch["segment_ids"][0] != 0]
  expected = np.concatenate([[*c, documents.EOS_ID] for c in docs.values()])
  np.testing.assert_array_equal(tokens, expected)


def test_empty_files_are_skipped(tmp_path):
  cfg = _cfg(_write_docs(tmp_path, {"a.txt": b"", "b.txt": b"ab", "c.txt": b""}), 1.0)
  (batch,) = _first_batches(cfg, 1, split="eval", batch_size=1, seq_len=8)
  np.testing.assert_array_equal(batch["segment_ids"][0], [1, 1, 1, 0, 0, 0, 0, 0])


def test_eval_batches_pad_the_last_batch_instead_of_dropping_it(tmp_path):
  # 20 bytes + EOS fill three rows of seq_len + 1 = 9 tokens; the fourth row is padding.
  cfg = _cfg(_write_docs(tmp_path, {"a.txt": b"x" * 20}), eval_fraction=1.0)
  (batch,) = pipeline.eval_batches(cfg, batch_size=4, seq_len=8, max_batches=10)
  assert all(v.shape[0] == 4 for v in batch.values())
  assert (batch["weights"][:3].sum(axis=1) > 0).all()
  assert not batch["weights"][3].any() and not batch["segment_ids"][3].any()


def test_missing_data_path_raises_naming_the_field(tmp_path):
  with pytest.raises(ValueError, match="data.path"):
    data.resolve_files(_cfg(str(tmp_path / "nope" / "**" / "*.txt")))


def test_unknown_tokenizer_raises_naming_the_field():
  with pytest.raises(ValueError, match="data.tokenizer"):
    data.resolve_files(_cfg(tokenizer="gpt2"))


def test_same_seed_gives_same_batches_and_different_seed_differs():
  a, b, c = (_first_batches(_cfg(), 3, seed=s) for s in (0, 0, 1))
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c))


def test_row_blocks_read_disjoint_file_shards(tmp_path):
  docs = {f"{i}.txt": f"document {i}".encode() for i in range(6)}
  cfg = _cfg(_write_docs(tmp_path, docs), eval_fraction=0.0)
  seen = [
    _complete_docs(
      _first_batches(cfg, 1, batch_size=2, seq_len=128, shards=2, rows=slice(j, j + 1))[0]
    )
    for j in (0, 1)
  ]
  assert seen[0] and seen[1] and not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(docs.values())


def test_reading_a_processs_rows_gives_those_rows_of_the_global_batch():
  whole = _first_batches(_cfg(), 3, batch_size=4, shards=2)
  halves = [
    _first_batches(_cfg(), 3, batch_size=4, shards=2, rows=r) for r in (slice(0, 2), slice(2, 4))
  ]
  for step, batch in enumerate(whole):
    assert batch["inputs"].shape == (4, 64)
    for k in batch:
      np.testing.assert_array_equal(batch[k][:2], halves[0][step][k])
      np.testing.assert_array_equal(batch[k][2:], halves[1][step][k])


@pytest.mark.parametrize(
  "kw, message",
  [
    (dict(shards=3), "must be a positive divisor of train.batch_size=4"),
    (dict(shards=2, rows=slice(1, 3)), "rows 1:3 of each batch are not whole blocks"),
  ],
)
def test_bad_shards_are_one_clear_error(kw, message):
  with pytest.raises(ValueError, match=message):
    pipeline.make_dataset(_cfg(), split="train", batch_size=4, seq_len=64, seed=0, **kw)


@pytest.mark.parametrize(
  "shuffle_tokens, shards, taken",
  [
    (0, 1, 0),  # at the start: grain's no-remainder marker after JSON
    (0, 1, 5),
    (0, 2, 5),
    (257 * 6, 1, 4),  # windows of 6 rows; batches of 4 straddle them
    (257 * 6, 2, 3),
    (None, 1, 2),  # the default window
  ],
)
def test_train_iterator_resumes_from_its_checkpoint_state(shuffle_tokens, shards, taken):
  kw = {} if shuffle_tokens is None else dict(shuffle_tokens=shuffle_tokens)
  ds = pipeline.make_dataset(
    _cfg(**kw), split="train", batch_size=4, seq_len=256, seed=0, shards=shards
  )
  it = iter(ds)
  for _ in range(taken):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # as the checkpoint stores it
  expected = [next(it) for _ in range(4)]
  resumed = iter(ds)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def _letters(batch) -> list[set]:
  return [set(bytes(row[row < 256].astype(np.uint8)).decode()) for row in batch["inputs"]]


def test_train_rows_are_shuffled_across_documents_within_the_window(tmp_path):
  # Four long one-letter documents: unshuffled, a batch is four rows of one of them.
  glob = _write_docs(tmp_path, {f"{c}.txt": c.encode() * 3000 for c in "abcd"})
  kw = dict(batch_size=4, seq_len=64)
  (plain,) = _first_batches(_cfg(glob, 0.0, shuffle_tokens=0), 1, **kw)
  (mixed,) = _first_batches(_cfg(glob, 0.0, shuffle_tokens=65 * 200), 1, **kw)
  assert len(set().union(*_letters(plain))) == 1
  assert len(set().union(*_letters(mixed))) > 1


def test_negative_shuffle_tokens_is_one_error_naming_the_field():
  with pytest.raises(ValueError, match=r"data.shuffle_tokens=-1 must be >= 0"):
    data.check(_cfg(shuffle_tokens=-1))
