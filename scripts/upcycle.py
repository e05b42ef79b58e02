"""Upcycle a dense run's checkpoint into the first checkpoint of an MoE run.

  python scripts/upcycle.py --config configs/llama3.py:tiny --dense_workdir runs/dense \
      --workdir runs/moe --config.model.ffn_pattern="('moe',)" \
      --config.model.moe.num_experts=8 --config.model.moe.top_k=2 \
      --config.model.moe.expert_mlp_dim=768 [--granularity=1 --router_init=zeros]

--config is the MoE model; the dense run must be that model with dense FFNs.
Then train it: scripts/train.py with the same --config flags and --workdir.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from trainer import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "MoE target: configs/FAMILY.py:PRESET")
_DENSE = flags.DEFINE_string("dense_workdir", None, "Workdir of the dense run to upcycle.")
_WORKDIR = flags.DEFINE_string("workdir", None, "New workdir for the MoE run.")
_GRANULARITY = flags.DEFINE_integer(
  "granularity", 1, "Segments per dense FFN (1: experts are whole copies)."
)
_ROUTER = flags.DEFINE_enum("router_init", "zeros", ["zeros", "noise"], "Router init.")
_ROUTER_STD = flags.DEFINE_float("router_std", 0.02, "Router noise std (router_init=noise).")
_NOISE = flags.DEFINE_float("noise", 0.0, "Expert weight noise, as a fraction of each std.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from trainer import upcycle  # noqa: PLC0415

  if None in (_CONFIG.value, _DENSE.value, _WORKDIR.value):
    sys.exit("error: --config, --dense_workdir and --workdir are required")
  config = cli.config_or_exit(_CONFIG)
  try:
    step = upcycle.upcycle(
      config, _DENSE.value, _WORKDIR.value, granularity=_GRANULARITY.value,
      router_init=_ROUTER.value, router_std=_ROUTER_STD.value, noise=_NOISE.value,
    )  # fmt: skip
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"upcycled step {step} of {_DENSE.value} into {_WORKDIR.value}/checkpoints/0")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
