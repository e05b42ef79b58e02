"""Starting a run from a Hugging Face directory (`checkpoint.init_from`): the
config is checked against its config.json, and each device reads only its own
shards (modeling/hf/loader.py `load_sharded`): 1 and 8 devices load equal params,
and host memory grows by the params plus about one tensor, not by a second copy
of the model."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx, traverse_util

from tests.conftest import ROOT, fake_devices_env, small_train_config

_LOAD = """
import json, sys, numpy as np, jax
from flax import nnx, traverse_util
from modeling.decoder import Decoder
from modeling.hf import export, loader
from parallelism.mesh import make_mesh
from tests.conftest import family_config
from trainer import precision, state as state_lib
family, directory, out = sys.argv[1], sys.argv[2], sys.argv[3]
mesh, model_over = json.loads(sys.argv[4]), json.loads(sys.argv[5])
config = family_config(family)
config.model.update(model_over)
config.mesh.update(mesh)
cfg = precision.model_config(config)
if sys.argv[6] == "export":
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  export.save(model, config.model, directory)
  sys.exit(0)
targets = state_lib.abstract_weights(cfg, make_mesh(config.mesh))
model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
def anon():
  return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1]) * 1024
base = anon(); peak = [base]
shard = loader._shard
def watched(*a):
  r = shard(*a); peak.append(anon()); return r
loader._shard = watched
loaded, skipped = loader.load_sharded(directory, model, targets)
jax.block_until_ready(loaded)
peak.append(anon())
flat = traverse_util.flatten_dict(jax.device_get(loaded))
np.savez(out, **{"/".join(map(str, k)): v for k, v in flat.items()})
print(json.dumps({"peak": max(peak) - base, "bytes": sum(v.nbytes for v in flat.values()), "largest": max(v.nbytes for v in flat.values())}))
"""
# ~94 MB of float32 params; the largest tensor (the embedding) 16 MB.
_BIG = {"embed_dim": 512, "num_layers": 4, "mlp_dim": 2048, "vocab_size": 8192, "num_heads": 8,
        "num_kv_heads": 2}  # fmt: skip


def _run(family, directory, out, mesh, model, what, devices=1) -> str:
  result = subprocess.run(
    [sys.executable, "-c", _LOAD, family, str(directory), str(out), json.dumps(mesh),
     json.dumps(model), what], cwd=ROOT, env=fake_devices_env(devices), capture_output=True,
    text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.parametrize(
  "family,model,mesh",
  [
    ("llama3", _BIG, {"data": 1, "fsdp": 4, "tensor": 2}),
    ("deepseek_v3", {}, {"data": 1, "fsdp": 2, "tensor": 2, "expert": 2}),  # expert slices
  ],
)
def test_sharded_loads_equal_one_device_and_host_memory_stays_near_the_params(
  family, model, mesh, tmp_path
):
  _run(family, tmp_path / "hf", "", {}, model, "export")
  one = json.loads(_run(family, tmp_path / "hf", tmp_path / "one.npz", {}, model, "load"))
  eight = json.loads(_run(family, tmp_path / "hf", tmp_path / "eight.npz", mesh, model, "load", 8))
  a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "eight.npz")
  assert sorted(a.files) == sorted(b.files)
  assert all(np.array_equal(a[k], b[k]) for k in a.files)
  if model:  # big enough to measure: the params plus a few tensors (measured: +19 MB on
    # 1 device, +11 MB on 8, the largest tensor 16 MB); a second copy would add 94 MB
    for run in (one, eight):
      assert run["peak"] < run["bytes"] + 3 * run["largest"] < 2 * run["bytes"], run


def test_init_from_a_hugging_face_directory_checks_the_config_and_loads_it(tmp_path):
  from modeling.hf import export  # noqa: PLC0415
  from trainer.trainer import Trainer  # noqa: PLC0415

  config = small_train_config("llama3", steps=2, log_every=1)
  config.optim.warmup_steps = 1
  source = Trainer(config, str(tmp_path / "a"))
  model = nnx.merge(source.graphdef, source.state["params"], source.state["model_state"])
  export.save(model, config.model, tmp_path / "hf")
  source.close()
  config.train.seed = 7  # another init: every param must come from the directory
  config.checkpoint.init_from = str(tmp_path / "hf")
  started = Trainer(config, str(tmp_path / "b"))
  want = traverse_util.flatten_dict(jax.device_get(source.state["params"]))
  got = traverse_util.flatten_dict(jax.device_get(started.state["params"]))
  assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
  started.close()
  config.model.num_layers = 3
  with pytest.raises(ValueError, match=r"holds another model: model.num_layers=3 but its "
                                       r"config.json gives 2"):  # fmt: skip
    Trainer(config, str(tmp_path / "c"))
