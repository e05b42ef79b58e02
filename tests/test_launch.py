"""The launch recipes in examples/launch/ run the commands the README shows:
each shell recipe is run with a stand-in `srun` / `gcloud` that prints what it
was asked to run, and the JobSet manifest parses and starts train.py on a config
that exists. (The 2-process loopback test in test_multihost.py is the proof that
multi-process training works.)"""

import os
import subprocess

import pytest

from tests.conftest import ROOT

LAUNCH = ROOT / "examples" / "launch"


def _stand_in(tmp_path, name: str):
  """A `name` executable that prints its arguments, each ended by a NUL."""
  path = tmp_path / name
  path.write_text('#!/bin/bash\nprintf "%s\\0" "$@"\n')
  path.chmod(0o755)
  return dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")


def _args(stdout: str) -> list[str]:
  return stdout.split("\0")[:-1]


def _config_exists(spec: str) -> bool:
  return (ROOT / spec.split(":")[0]).is_file()


def test_the_slurm_recipe_runs_train_py_on_every_node(tmp_path):
  env = _stand_in(tmp_path, "srun") | {"SLURM_JOB_NAME": "jf", "SLURM_JOB_NUM_NODES": "4"}
  out = subprocess.run(
    ["bash", str(LAUNCH / "slurm.sbatch"), "--config.train.steps=10"], cwd=ROOT, env=env,
    capture_output=True, text=True, timeout=60,
  )  # fmt: skip
  assert out.returncode == 0, out.stderr
  args = _args(out.stdout)
  assert args[:3] == ["--kill-on-bad-exit=1", ".venv/bin/python", "scripts/train.py"]
  assert _config_exists(args[args.index("--config") + 1])
  assert args[args.index("--workdir") + 1] == f"{ROOT}/runs/jf"
  assert args[-2:] == ["--config.mesh.dcn_fsdp=4", "--config.train.steps=10"]


def test_the_tpu_vm_recipe_sets_up_and_starts_every_worker(tmp_path):
  env = _stand_in(tmp_path, "gcloud") | {"TPU_NAME": "pod", "ZONE": "us-east5-a"}
  run = lambda *a: subprocess.run(  # noqa: E731
    ["bash", str(LAUNCH / "tpu_vm.sh"), *a], cwd=ROOT, env=env, capture_output=True, text=True
  )
  setup, train = run("setup"), run("train", "--config", "configs/llama3.py:8b", "--workdir", "/r")
  for out in (setup, train):
    assert out.returncode == 0, out.stderr
    args = _args(out.stdout)
    assert args[:6] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-east5-a"]
    assert "--worker=all" in args
  assert ".venv/bin/pip install -e '.[tpu]'" in _args(setup.stdout)[-1]
  assert "scripts/train.py --config configs/llama3.py:8b --workdir /r" in train.stdout
  assert run().returncode == 2


def test_the_jobset_manifest_starts_train_py_with_a_shared_workdir():
  yaml = pytest.importorskip("yaml")  # (PyYAML comes with the test extra's transformers)
  manifest = yaml.safe_load((LAUNCH / "jobset.yaml").read_text())
  assert manifest["kind"] == "JobSet"
  job = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
  pod = job["template"]["spec"]
  command = pod["containers"][0]["command"]
  assert command[:2] == ["python", "scripts/train.py"]
  assert _config_exists(command[command.index("--config") + 1])
  workdir = command[command.index("--workdir") + 1]
  assert any(workdir.startswith(m["mountPath"]) for m in pod["containers"][0]["volumeMounts"])
  assert job["parallelism"] == job["completions"]
