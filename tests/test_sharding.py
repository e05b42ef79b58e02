"""The same train steps on 1 device and on an 8-device (fake CPU) mesh give
the same losses: params, batch and optimizer state follow the rules table."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

_RUN = """
import json, sys
from tests.conftest import small_train_config
from trainer.trainer import Trainer
config = small_train_config("llama3", steps=3, log_every=1, batch_size=8)
config.model.update(num_heads=4, num_kv_heads=2)
config.optim.warmup_steps = 1
config.mesh.update(json.loads(sys.argv[1]))
Trainer(config, sys.argv[2]).run()
"""


def _losses(tmp_path, mesh: dict, devices: int) -> list[float]:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  workdir = tmp_path / "-".join(f"{k}{v}" for k, v in mesh.items())
  subprocess.run(
    [sys.executable, "-c", _RUN, json.dumps(mesh), str(workdir)],
    cwd=ROOT,
    env=env,
    check=True,
    capture_output=True,
    timeout=300,
  )
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in records if "loss" in r]


@pytest.mark.parametrize(
  "mesh",
  [dict(data=1, fsdp=8, tensor=1), dict(data=2, fsdp=2, tensor=2)],
  ids=["fsdp8", "data2-fsdp2-tensor2"],
)
def test_sharded_steps_match_single_device(tmp_path, mesh):
  single = _losses(tmp_path, dict(data=1, fsdp=1, tensor=1), devices=1)
  sharded = _losses(tmp_path, mesh, devices=8)
  assert len(single) == 3
  np.testing.assert_allclose(sharded, single, rtol=1e-5)
