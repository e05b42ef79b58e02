"""Tokenize text / JSONL / Parquet / Arrow input into ArrayRecord shards for training.

  python scripts/prepare_data.py --out data/stdlib                     # the default corpus
  python scripts/prepare_data.py --path '/data/**/*.jsonl' --field text \
      --tokenizer /models/x/tokenizer.json --out data/x --num_shards 64

Then train on it: scripts/train.py ... --config.data.path=data/x (with the
same --config.data.tokenizer). Prints the throughput in MB/s of input.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from trainer import cli  # noqa: E402

_PATH = flags.DEFINE_string(
  "path",
  "",
  "Glob of text / JSONL / Parquet / Arrow files, or a save_to_disk dir; '' = the default corpus.",
)
_FORMAT = flags.DEFINE_enum(
  "format", "auto", ["auto", "text", "jsonl", "parquet", "arrow"], "Input format."
)
_FIELD = flags.DEFINE_string("field", "text", "JSONL key / column holding each document's text.")
_SKIP_BAD = flags.DEFINE_bool("skip_bad_records", False, "Skip and count unparsable JSONL lines.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "byte", "'byte' or a tokenizer.json path.")
_EOS = flags.DEFINE_string("eos_token", "", "tokenizer.json end-of-document token.")
_EVAL = flags.DEFINE_float("eval_fraction", 0.02, "Fraction of files held out for eval.")
_OUT = flags.DEFINE_string("out", None, "New directory for the shards and meta.json.")
_SHARDS = flags.DEFINE_integer("num_shards", 8, "Train shards.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Tokenizer processes; 0 = one per CPU.")


def main(argv):
  del argv
  from configs import base  # noqa: PLC0415
  from trainer import prepare  # noqa: PLC0415

  if _OUT.value is None:
    sys.exit("error: --out is required")
  cfg = base.get_config().data
  cfg.update(
    dict(path=_PATH.value, format=_FORMAT.value, field=_FIELD.value, tokenizer=_TOKENIZER.value,
         eos_token=_EOS.value, eval_fraction=_EVAL.value, skip_bad_records=_SKIP_BAD.value)
  )  # fmt: skip
  try:
    meta = prepare.prepare(cfg, _OUT.value, num_shards=_SHARDS.value, workers=_WORKERS.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  mb, seconds = meta["input_bytes"] / 1e6, meta["seconds"]
  for split, c in meta["splits"].items():
    print(f"{split}: {c['documents']} documents, {c['tokens']} tokens from {c['files']} files")
  print(f"{mb:.1f} MB in {seconds:.1f} s: {mb / seconds:.2f} MB/s -> {_OUT.value}")
  if any(meta["skipped"].values()):
    print("skipped: " + ", ".join(f"{n} {r} (first: {meta['skipped_first'][r]})"
                                  for r, n in meta["skipped"].items() if n))  # fmt: skip


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
