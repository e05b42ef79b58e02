"""Generate text (or token ids) from a trained model.

  python scripts/generate.py --checkpoint runs/demo --prompt "def main(" --max_new_tokens 64
  python scripts/generate.py --checkpoint HF_DIR --prompt_ids 5,17,99 --print_ids --greedy

--checkpoint is a run's workdir (its latest committed step and saved config) or a
local Hugging Face directory (config.json + safetensors; its tokenizer.json if
there). --config FAMILY.py[:PRESET] names the family the checkpoint must be; with
a Hugging Face directory its other sections (precision, compute, data, ...) apply
while the dimensions come from config.json. Without --checkpoint it generates
from the preset's random init. One prompt
streams its text as it is produced; several (--prompts FILE: one per line, or
--prompt_ids given more than once) decode as one batch and print a line each.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from trainer import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/FAMILY.py[:PRESET]")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir or local HF directory.")
_PROMPT = flags.DEFINE_string("prompt", None, "One prompt (text).")
_PROMPTS = flags.DEFINE_string("prompts", None, "A file of prompts, one per line.")
_PROMPT_IDS = flags.DEFINE_multi_string("prompt_ids", None, "Token ids: 5,17,99 or '5 17 99'.")
_PRINT_IDS = flags.DEFINE_bool("print_ids", False, "Print the new token ids, not text.")
_GREEDY = flags.DEFINE_bool("greedy", False, "Argmax decoding (else sampling).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass, in (0, 1].")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "New tokens per prompt, at most.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def _prompts(tok) -> list[list[int]]:
  if _PROMPT_IDS.value:
    return [[int(t) for t in p.replace(",", " ").split()] for p in _PROMPT_IDS.value]
  texts = [_PROMPT.value] if _PROMPT.value is not None else []
  if _PROMPTS.value:
    texts += pathlib.Path(_PROMPTS.value).read_text().splitlines()
  if not texts:
    raise ValueError("give --prompt, --prompts FILE or --prompt_ids")
  if tok is None:
    raise ValueError("this checkpoint has no tokenizer of its vocabulary: use --prompt_ids")
  return [tok.ids(t) for t in texts]


def _model():
  from trainer import inference  # noqa: PLC0415

  config = _CONFIG.value
  if _CHECKPOINT.value:
    config, model = inference.load(_CHECKPOINT.value, config)
  elif config is not None:
    from flax import nnx  # noqa: PLC0415

    from modeling.decoder import Decoder  # noqa: PLC0415
    from trainer import precision  # noqa: PLC0415

    print("no --checkpoint: generating from the preset's random init", file=sys.stderr)
    model = Decoder(precision.model_config(config), rngs=nnx.Rngs(_SEED.value))
  else:
    raise ValueError("give --checkpoint (a workdir or HF directory) or --config")
  return config, model, inference.tokenizer(_CHECKPOINT.value or ".", config)


def main(argv):
  del argv
  from modeling import generate  # noqa: PLC0415

  try:
    config, model, tok = _model()
    prompts = _prompts(tok)
    sampling = generate.Sampling(_GREEDY.value, _TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
    generate.check(sampling)
    for p in prompts:
      if max(p, default=0) >= config.model.vocab_size or min(p, default=0) < 0:
        raise ValueError(f"prompt ids must be in [0, {config.model.vocab_size}): got {p}")
  except ValueError as e:
    sys.exit(f"error: {e}")
  eos = tok.eos_id if tok is not None else None
  print_ids = _PRINT_IDS.value or tok is None
  stream = len(prompts) == 1 and not print_ids
  line, shown = [], [""]  # the current line's tokens and the text printed of them

  def on_token(row, token):  # prints the text the new token adds
    line.append(token)
    text = tok.decode(line)
    if text.endswith("\ufffd"):  # a character whose other bytes are still to come
      return
    print(text[len(shown[0]) :], end="", flush=True)
    shown[0] = text
    if text.endswith("\n"):  # re-decode only the current line
      line.clear()
      shown[0] = ""

  try:
    out = generate.generate(
      model, prompts, _MAX_NEW.value, sampling, seed=_SEED.value, eos_id=eos,
      on_token=on_token if stream else None, max_len=config.model.max_len,
    )  # fmt: skip
  except ValueError as e:
    sys.exit(f"error: {e}")
  if stream:
    print()
    return
  for ids in out:
    print(" ".join(map(str, ids)) if print_ids else tok.decode(ids))


def run():
  """The console entry point (pyproject.toml [project.scripts])."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
