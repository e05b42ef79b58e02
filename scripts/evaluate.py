"""Held-out loss and perplexity of a checkpoint.

  python scripts/evaluate.py --checkpoint runs/demo [--data 'held_out/*.txt'] [--batches 8]

--checkpoint is a run's workdir (its latest committed step, its saved data and
tokenizer settings) or a local Hugging Face directory (the data and tokenizer
then come from --config FAMILY.py[:PRESET], if given, and --data, --tokenizer). The data's eval split (data.eval_fraction
of the documents, as in training) is cut into batches of --batch_size x --seq_len
tokens, split over every local device. Prints nats per token (the train loop's
eval_loss), nats per byte (UTF-8 bytes of the targets, EOS counted as none) and
perplexity; --json prints one JSON object instead.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from trainer import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/FAMILY.py[:PRESET]")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir or local HF directory.")
_DATA = flags.DEFINE_string("data", "", "data.path override: text/JSONL files or a glob.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "data.tokenizer override: byte or a file.")
_BATCHES = flags.DEFINE_integer("batches", 8, "Eval batches, at most.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Rows per batch (0: the run's).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "Tokens per row (0: the run's).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")


def main(argv):
  del argv
  from trainer import inference  # noqa: PLC0415

  if not _CHECKPOINT.value:
    sys.exit("error: --checkpoint (a workdir or HF directory) is required")
  try:
    config, model = inference.load(_CHECKPOINT.value, _CONFIG.value)
    config.unlock()
    if _DATA.value:
      config.data.path = _DATA.value
    if _TOKENIZER.value:
      config.data.tokenizer = _TOKENIZER.value
    result = inference.evaluate(
      config, model, batch_size=_BATCH_SIZE.value or config.train.batch_size,
      seq_len=_SEQ_LEN.value or config.train.seq_len, max_batches=_BATCHES.value,
      progress=not _JSON.value,
    )  # fmt: skip
  except ValueError as e:
    sys.exit(f"error: {e}")
  if _JSON.value:
    print(json.dumps(result))
    return
  print(f"{_CHECKPOINT.value}: {result['batches']} batches, {result['tokens']} tokens, "
        f"{result['bytes']} bytes")  # fmt: skip
  print(f"  nats/token {result['nats_per_token']:.4f}  nats/byte {result['nats_per_byte']:.4f}  "
        f"perplexity {result['perplexity']:.2f}")  # fmt: skip


def run():
  """The console entry point (pyproject.toml [project.scripts])."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
