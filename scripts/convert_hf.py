"""Export a run's latest checkpoint as a Hugging Face checkpoint directory.

  python scripts/convert_hf.py --workdir runs/demo --out runs/demo/hf [--dtype bfloat16]

Writes config.json (the family's HF model_type) and model.safetensors (sharded
with an index past 5 GiB), which `transformers.AutoModelForCausalLM` and
`modeling.hf.load` both read. The model config comes from the checkpoint; the
training data is never read (it may have moved). Files are written world-readable
(as the umask allows).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402

from trainer import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of the run to export.")
_OUT = flags.DEFINE_string("out", None, "Directory for config.json and *.safetensors.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Tensor dtype.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from modeling.hf import export  # noqa: PLC0415
  from trainer import checkpoint, inference  # noqa: PLC0415

  if None in (_WORKDIR.value, _OUT.value):
    sys.exit("error: --workdir and --out are required")
  if not any((pathlib.Path(_WORKDIR.value) / "checkpoints").glob("[0-9]*")):
    sys.exit(f"error: no checkpoint in {_WORKDIR.value}/checkpoints to export")
  saved = checkpoint.Checkpointer(_WORKDIR.value, every=0, keep=1).saved_config()
  config = checkpoint.config_from_saved(saved)
  try:
    export.hf_config(config.model)  # fails before the restore if HF cannot express it
    config, model = inference.load(_WORKDIR.value)  # weights + saved config: no data read
    hf = export.save(model, config.model, _OUT.value, dtype=_DTYPE.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  step = checkpoint.committed_steps(pathlib.Path(_WORKDIR.value).absolute() / "checkpoints")[0]
  print(f"exported step {step} of {_WORKDIR.value} to {_OUT.value} as {hf['model_type']}")


def run():
  """The console entry point (pyproject.toml [project.scripts])."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
