"""Pipeline parallelism (`mesh.stage`, parallelism/pipeline.py): the step on 8 fake
devices with stages equals the same step on one device (loss, gradients, MTP and
MoE terms, router-bias and QK-clip hooks, the updated state); on one device the
pipelined decoder equals the layer scan; bad schedules are one error each."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling.decoder import Decoder
from parallelism import pipeline
from tests.conftest import fake_devices_env, family_config, run_on_mesh
from trainer import precision

# The same step (train.microbatches micro-batches, gradient accumulation on one
# device) on one device and on a mesh with stages; prints one JSON line of diffs.
_STEP = """
import json, sys
import jax, numpy as np
from parallelism.mesh import make_mesh
from tests.conftest import small_train_config
from tests.test_microbatch import _batch, _gradients as gradients
from trainer import step

family, mesh, case = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
config = small_train_config(family, batch_size=16, seq_len=32, microbatches=case["microbatches"])
config.model.num_layers = case["layers"]
config.compute.update(scan_layers="scan", **case.get("compute", {}))
config.optim.qk_clip_tau = case.get("qk_clip_tau", 0.0)
config.objective.update(**case.get("objective", {}))

ones = dict(data=1, fsdp=1, tensor=1, expert=1, context=1, stage=1)
one_config = config.copy_and_resolve_references()
one_config.mesh.update(ones)
one = step.build(one_config, make_mesh(one_config.mesh, jax.devices()[:1]))
config.mesh.update(ones | mesh)
staged = step.build(config, make_mesh(config.mesh))
assert staged.model_cfg.pipeline is not None and one.model_cfg.pipeline is None
state, batch = one.init_state(0), _batch(config)
(ref_total, (ref_ce, _, ref_terms)), ref_grads = gradients(one, config.train.microbatches)(state, batch)
put = lambda tree, abstract: jax.tree.map(
  lambda a, s: jax.device_put(np.asarray(a), s.sharding), tree, abstract)
host = jax.device_get(state)  # the steps below donate `state`
staged_state = put(host, staged.abstract_state)
staged_batch = jax.device_put(batch, staged.batch_sharding)
(total, (ce, _, terms)), grads = gradients(staged, 1)(staged_state, staged_batch)
leaves = lambda t: [np.asarray(x, np.float64) for x in jax.tree.leaves(t)]
diff = lambda a, b: max([0.0] + [float(np.abs(x - y).max()) for x, y in zip(leaves(a), leaves(b), strict=True)])
new, metrics = one.train_step(state, batch)
staged_new, staged_metrics = staged.train_step(staged_state, staged_batch)
hlo = staged.lower(staged_state, staged_batch).compile().as_text()
print(json.dumps({
  "total": [float(ref_total), float(total)], "ce": [float(ref_ce), float(ce)],
  "grads": diff(ref_grads, grads), "grad_scale": max(float(np.abs(g).max()) for g in leaves(ref_grads)),
  "terms": {k: diff(ref_terms[k], terms[k]) for k in ref_terms},
  "staged_terms": sorted(terms), "metrics": {k: diff(metrics[k], staged_metrics[k]) for k in metrics},
  "staged_metrics": sorted(staged_metrics),
  "params": diff(new["params"], staged_new["params"]),
  "model_state": diff(new["model_state"], staged_new["model_state"]),
  "router_bias_moved": diff(host["model_state"], new["model_state"]),
  "permutes": hlo.count("collective-permute("),
}))
"""

CASES = [
  # llama3: 8 layers = 8 periods; deepseek_v3: 1 dense prefix layer + 8 MoE periods + MTP.
  # 1f1b is the default schedule; with virtual_stages > 1 it is the interleaved one.
  ("llama3", dict(stage=2, fsdp=2, data=2), dict(layers=8, microbatches=4)),
  ("llama3", dict(stage=4, fsdp=2), dict(layers=8, microbatches=4, compute=dict(virtual_stages=2))),
  ("llama3", dict(stage=4, fsdp=2),
   dict(layers=8, microbatches=4, compute=dict(pipeline="circular", virtual_stages=2))),
  ("llama3", dict(stage=2, tensor=2, context=2),
   dict(layers=8, microbatches=2, compute=dict(remat="full"))),
  ("llama3", dict(stage=2, fsdp=4),
   dict(layers=8, microbatches=2, compute=dict(pipeline="gpipe", remat="full"))),
  # Balance and router-z weights on: the pipelined layers' stats reach the loss.
  ("deepseek_v3", dict(stage=2, fsdp=2, data=2),
   dict(layers=9, microbatches=4, objective=dict(moe_seq_aux_weight=0.01, moe_router_z_weight=0.001))),
  ("deepseek_v3", dict(stage=2, fsdp=2, data=2),
   dict(layers=9, microbatches=4, compute=dict(pipeline="circular"))),
  ("deepseek_v3", dict(stage=4, expert=2),
   dict(layers=9, microbatches=4, qk_clip_tau=5.0, compute=dict(virtual_stages=2, remat="full"))),
]  # fmt: skip


@pytest.mark.parametrize(
  "family, mesh, case", CASES, ids=lambda c: c if isinstance(c, str) else json.dumps(c)
)
def test_a_pipelined_step_equals_the_one_device_step(root, family, mesh, case):
  result = subprocess.run(
    [sys.executable, "-c", _STEP, family, json.dumps(mesh), json.dumps(case)],
    cwd=root, env=fake_devices_env(8), capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(*got["total"], rtol=1e-6)
  np.testing.assert_allclose(*got["ce"], rtol=1e-6)
  assert got["grads"] <= 1e-5 * got["grad_scale"], got
  assert all(d <= 1e-5 for d in got["terms"].values()), got["terms"]
  assert all(d <= 1e-5 for d in got["metrics"].values()), got["metrics"]
  assert got["params"] <= 1e-6 and got["model_state"] <= 1e-6, got
  assert got["permutes"] > 0  # activations move between stages by collective permutes
  if family == "deepseek_v3":  # MTP, MoE loads (the aux-free bias moved) reach the hooks
    assert {"mtp_loss", "expert_load", "aux_loss"} <= set(got["staged_terms"])
    assert got["router_bias_moved"] > 0
  if case.get("qk_clip_tau"):
    assert "max_logit" in got["staged_metrics"]


def test_training_on_stages_matches_one_device(tmp_path):
  """The trainer (data, steps, checkpoint) on stage=2 x fsdp=2 x data=2 vs one device
  accumulating the same 2 micro-batches."""
  run = dict(model=dict(num_layers=4), train=dict(microbatches=2), compute=dict(scan_layers="scan"))
  single = dict(data=1, fsdp=1, tensor=1, expert=1)
  losses, params = run_on_mesh(tmp_path / "one", "llama3", single, devices=1, **run)
  staged = dict(data=2, fsdp=2, tensor=1, expert=1, stage=2)
  staged_losses, staged_params = run_on_mesh(tmp_path / "pp", "llama3", staged, devices=8, **run)
  np.testing.assert_allclose(staged_losses, losses, rtol=1e-5)
  for name, value in params.items():
    np.testing.assert_allclose(staged_params[name], value, rtol=1e-5, atol=5e-5, err_msg=name)


@pytest.mark.parametrize("family, layers", [("llama3", 4), ("deepseek_v3", 5)])
@pytest.mark.parametrize("stages, virtual", [(2, 1), (2, 2), (4, 1)])
def test_the_pipelined_decoder_equals_the_layer_scan_on_one_device(family, layers, stages, virtual):
  """Without a mesh the hand-off is a roll; every chunk, round and bubble is the same."""
  config = family_config(family)
  config.unlock()
  config.model.num_layers = layers
  config.compute.scan_layers = "scan"
  cfg = precision.model_config(config)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, cfg.vocab_size)
  segment_ids = jnp.ones_like(tokens).at[:, 10:].set(2)
  positions = jnp.concatenate([jnp.arange(10), jnp.arange(6)])[None].repeat(8, 0)
  want, want_aux = model(tokens, positions=positions, segment_ids=segment_ids)
  model.cfg = dataclasses.replace(cfg, pipeline=pipeline.Schedule(stages, virtual, 4))
  got, got_aux = model(tokens, positions=positions, segment_ids=segment_ids)
  np.testing.assert_allclose(got, want, atol=1e-5)
  for path, stats in want_aux["layers"].items():
    for name in ("load", "max_logits", "seq_aux", "router_z", "dropped_frac"):
      if name in stats:  # per-sequence or summed stats: micro-batches change nothing
        np.testing.assert_allclose(got_aux["layers"][path][name], stats[name], atol=1e-5)


def test_the_bubble_fraction():
  sched = pipeline.Schedule(stages=4, virtual=2, microbatches=8)
  assert sched.bubble == 3 / 16 and sched.iterations == 8 * 2 + 3
  assert "bubble (stages-1)/(microbatches*virtual) = 18.8%" in sched.describe()


def _schedule(family="llama3", preset="tiny", stages=2, **fields):
  config = family_config(family, preset)
  config.unlock()
  config.mesh.stage = stages
  for key, value in fields.items():
    section, name = key.split("__")
    config[section][name] = value
  return pipeline.schedule(config, precision.model_config(config), stages)


def test_bad_schedules_are_one_error_each():
  with pytest.raises(ValueError) as e:
    _schedule("deepseek_v3", "full", stages=4, train__microbatches=8)
  assert str(e.value) == (
    "mesh.stage=4 x compute.virtual_stages=1 = 4 chunks do not divide the 58 scanned "
    "periods of 1 layer(s) (layers 3-60; layers 0-2 run before the pipeline, the rest "
    "after it): 14.50 periods a chunk. Use stage x virtual_stages in [1, 2, 29, 58], or a "
    "model.num_layers whose scanned periods divide"
  )
  with pytest.raises(ValueError, match=r"^train\.microbatches=2 is fewer than mesh\.stage=4"):
    _schedule(stages=4, train__microbatches=2)
  with pytest.raises(ValueError, match=r"^compute\.virtual_stages=2 must be >= 1, and 1 with"):
    _schedule(train__microbatches=2, compute__pipeline="gpipe", compute__virtual_stages=2)
  with pytest.raises(ValueError, match=r"^compute\.pipeline='zero_bubble' is not valid"):
    _schedule(train__microbatches=2, compute__pipeline="zero_bubble")
  with pytest.raises(ValueError) as e:
    _schedule(train__microbatches=3, compute__virtual_stages=2)
  assert str(e.value) == (
    "train.microbatches=3 with compute.pipeline=1f1b and compute.virtual_stages=2 must be a "
    "multiple of mesh.stage=2 (the interleaved schedule runs micro-batches in groups of 2); "
    "set it to 2 or 4"
  )
  # One round has no groups; the circular schedule needs none.
  assert _schedule(train__microbatches=3).virtual == 1
  assert _schedule(train__microbatches=3, compute__pipeline="circular",
                   compute__virtual_stages=2).virtual == 2  # fmt: skip
  with pytest.raises(ValueError, match=r"compute\.scan_layers=unroll leaves none"):
    _schedule(train__microbatches=2, compute__scan_layers="unroll")
  assert _schedule(train__microbatches=2).describe().startswith("pipeline: 1f1b, 2 stages")
  assert _schedule(stages=1) is None


def test_a_bad_schedule_stops_plan_before_any_compile(root):
  result = subprocess.run(
    [sys.executable, "scripts/plan.py", "--config", "configs/llama3.py:tiny",
     "--mesh", "stage=4,fsdp=2", "--config.train.batch_size=16"],
    cwd=root, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
    "error: train.microbatches=1 is fewer than mesh.stage=4: every stage needs its own "
    "micro-batch in flight; set train.microbatches >= 4 (the bubble shrinks as it grows)"
  )
