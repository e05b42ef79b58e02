"""Multi-process training through jax.distributed: two CPU processes on
127.0.0.1 (fsdp=2, one device each) run the tiny MoE model and match the
one-process losses. Each process reads only its own rows of every batch (data.shards=2
fixes the batches, so the one-process run reads both blocks itself) and saves its own
data-iterator state in the checkpoint."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from parallelism.mesh import detected_cluster, initialize_distributed
from tests.conftest import FAST_COMPILE, ROOT

_ARGS = [
  "--config.train.steps=3",
  "--config.train.batch_size=4",
  "--config.train.seq_len=64",
  "--config.train.log_every=1",
  "--config.train.eval_batches=1",
  "--config.optim.warmup_steps=1",
  "--config.model.num_layers=3",
  "--config.model.embed_dim=64",
  "--config.model.mlp_dim=128",
  "--config.logging.progress_bar=False",
  "--config.data.shards=2",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train(workdir, mesh: str, extra=(), process_id=None):
  env = dict(os.environ, XLA_FLAGS=f"{FAST_COMPILE} --xla_force_host_platform_device_count=1")
  cmd = [
    sys.executable,
    "scripts/train.py",
    "--config",
    "configs/deepseek_v3.py:tiny",
    "--workdir",
    str(workdir),
    *_ARGS,
    *[f"--config.mesh.{kv}" for kv in mesh.split(",")],
    *extra,
  ]
  return subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def _losses(workdir) -> list[float]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_two_processes_match_one(tmp_path):
  single = _train(tmp_path / "one", "fsdp=1")
  out, _ = single.communicate(timeout=600)
  assert single.returncode == 0, out[-3000:]

  coordinator = f"127.0.0.1:{_free_port()}"
  procs = [
    _train(
      tmp_path / "two",
      "fsdp=2",
      ["--coordinator", coordinator, "--num_processes=2", f"--process_id={i}"],
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-3000:]
  np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
  assert len(_losses(tmp_path / "two")) == 3  # process 1 wrote nothing
  data_states = sorted(p.name for p in (tmp_path / "two").glob("checkpoints/3/data/*.json"))
  assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]


def test_lone_process_does_not_initialize(monkeypatch):
  for key in ("SLURM_JOB_ID", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "KUBERNETES_SERVICE_HOST"):
    monkeypatch.delenv(key, raising=False)
  initialize_distributed()  # no flags, no cluster: a no-op, not a hang
  assert not jax.distributed.is_initialized()


@pytest.mark.parametrize(
  "env,kind",
  [
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, ""),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, "tpu"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "3"}, "kubernetes"),
    ({}, ""),
  ],
)
def test_cluster_detection(env, kind):
  assert detected_cluster(env) == kind


def test_partial_flags_are_an_error():
  with pytest.raises(ValueError, match="go together"):
    initialize_distributed("127.0.0.1:1234", 2, -1)


def _fake_devices(n: int, **per_device):
  """Device stand-ins (GPU-like: no TPU coordinates) with the given attributes,
  each a function of the device index."""
  import types  # noqa: PLC0415

  return [
    types.SimpleNamespace(
      id=i, platform="gpu", device_kind="fake", **{k: f(i) for k, f in per_device.items()}
    )  # fmt: skip
    for i in range(n)
  ]


def test_a_multi_slice_mesh_keeps_each_slice_in_one_block_of_the_dcn_axes():
  """mesh.dcn_data=2 over 2 TPU-style slices of 4: the data axis's halves are the
  slices; mesh.dcn_fsdp=2 over 2 GPU nodes (process index): fsdp's halves are the
  nodes. A count of slices that does not match is one error naming the fields."""
  from parallelism.mesh import dcn_shape, hybrid_devices  # noqa: PLC0415

  slices = _fake_devices(8, slice_index=lambda i: i // 4, process_index=lambda i: 0)
  grid = hybrid_devices((2, 4, 1, 1, 1), (2, 1, 1, 1, 1), slices)
  assert [[d.slice_index for d in row.ravel()] for row in grid] == [[0] * 4, [1] * 4]
  nodes = _fake_devices(8, process_index=lambda i: i % 2)
  grid = hybrid_devices((4, 2, 1, 1, 1), (1, 2, 1, 1, 1), nodes)
  assert {d.process_index for d in grid[:, 0].ravel()} == {0}
  assert {d.process_index for d in grid[:, 1].ravel()} == {1}
  with pytest.raises(ValueError, match="mesh.dcn_data x mesh.dcn_fsdp = 4 but the devices"):
    hybrid_devices((4, 2, 1, 1, 1), (2, 2, 1, 1, 1), nodes)
  with pytest.raises(ValueError, match="mesh.dcn_fsdp=3 must be a positive divisor of mesh.fsdp=4"):
    dcn_shape({"dcn_data": 1, "dcn_fsdp": 3}, (2, 4, 1, 1, 1))


def test_one_slice_meshes_come_from_jax_make_mesh_with_auto_axes():
  from configs import base  # noqa: PLC0415
  from parallelism.mesh import make_mesh  # noqa: PLC0415

  mesh = make_mesh(base.get_config().mesh)
  assert mesh.devices.size == jax.device_count()
  assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}
