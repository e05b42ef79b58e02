"""The 1F1B schedule (parallelism/pipeline_1f1b.py): on one device (the hand-offs
are rolls) its loss and gradients equal the forward-then-backward loop's, with the
MoE balance terms on; its job order keeps each micro-batch's work in order; and it
holds fewer activations than that loop when micro-batches outnumber stages.
(tests/test_pipeline.py compares it on 8 devices with the one-device step.)"""

import dataclasses
import functools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from modeling.decoder import Decoder
from parallelism import pipeline, pipeline_1f1b
from tests.conftest import fake_devices_env, family_config
from tests.test_microbatch import _batch
from trainer import objective, precision, step


@pytest.mark.parametrize(
  "family, layers, stages, virtual, microbatches",
  [("llama3", 4, 2, 1, 4), ("llama3", 8, 2, 2, 4), ("deepseek_v3", 9, 4, 2, 8)],
)
def test_1f1b_gradients_equal_the_forward_then_backward_loop(
  family, layers, stages, virtual, microbatches
):
  config = family_config(family)
  config.unlock()
  config.model.num_layers = layers
  config.compute.scan_layers = "scan"
  config.train.update(batch_size=16, seq_len=32, microbatches=microbatches)
  config.objective.update(moe_seq_aux_weight=0.01, moe_router_z_weight=0.001)
  cfg = precision.model_config(config)
  obj = objective.from_config(config, cfg)
  model, batch = Decoder(cfg, rngs=nnx.Rngs(0)), _batch(config)
  results = {}
  for kind in ("circular", "1f1b"):
    staged = nnx.clone(model)
    staged.cfg = dataclasses.replace(
      cfg, pipeline=pipeline.Schedule(stages, virtual, microbatches, kind)
    )
    graphdef, params, rest = nnx.split(staged, nnx.Param, ...)
    loss_fn = step.make_loss_fn(graphdef, staged.cfg, obj, None, {})
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, mtp=obj.mtp is not None), has_aux=True)
    results[kind] = jax.jit(grad_fn)(params, rest, batch, 0)
  (want, (want_ce, want_aux, want_terms)), want_grads = results["circular"]
  (got, (got_ce, got_aux, got_terms)), got_grads = results["1f1b"]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got_ce, want_ce, rtol=1e-6)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(want_grads))
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(g, w, atol=1e-6 * scale)
  assert sorted(got_terms) == sorted(want_terms)
  for name in want_terms:
    np.testing.assert_allclose(got_terms[name], want_terms[name], atol=1e-5, err_msg=name)
  assert sorted(got_aux["layers"]) == sorted(want_aux["layers"])
  if family == "deepseek_v3":
    assert float(want_terms["aux_loss"]) > 0  # the balance terms are in the loss


@pytest.mark.parametrize(
  "stages, virtual, microbatches", [(2, 1, 3), (4, 1, 8), (2, 3, 4), (4, 2, 8)]
)
def test_1f1b_job_order(stages, virtual, microbatches):
  """Every (micro-batch, chunk) runs forward once and backward once, in order through
  the chunks, its backward after its forward; a stage never holds more chunk inputs
  than `in_flight`."""
  sched = pipeline.Schedule(stages, virtual, microbatches, "1f1b")
  S, V, M = stages, virtual, microbatches
  D = V * S - 1
  forward_job, backward_job = pipeline_1f1b._jobs(sched)
  fwd, bwd = {}, {}
  for t in range(M * V + S - 1 + D):
    for s in range(S):
      if 0 <= t - s < M * V:
        r, m = forward_job(t - s)
        fwd[m, r * S + s] = t
      j = t - D - (S - 1 - s)
      if 0 <= j < M * V:
        r, m, fj = backward_job(j)
        assert forward_job(fj) == (r, m)
        bwd[m, r * S + s] = t
  assert len(fwd) == len(bwd) == M * V * S
  for m in range(M):
    for c in range(V * S - 1):
      assert fwd[m, c] < fwd[m, c + 1] and bwd[m, c + 1] < bwd[m, c]
    assert fwd[m, V * S - 1] == bwd[m, V * S - 1]  # the loss runs in between, same tick
  for s in range(S):
    held = [
      sum(fwd[m, r * S + s] <= t <= bwd[m, r * S + s] for m in range(M) for r in range(V))
      for t in range(M * V + S - 1 + D)
    ]
    assert max(held) <= pipeline_1f1b.in_flight(sched)


def _peak(root, schedule: str) -> int:
  result = subprocess.run(
    [sys.executable, "scripts/plan.py", "--config", "configs/llama3.py:tiny", "--mesh",
     "stage=2,fsdp=4", "--compile", "--json", "--config.model.num_layers=8",
     "--config.train.batch_size=64", "--config.train.seq_len=256",
     "--config.train.microbatches=16", "--config.compute.remat=full",
     f"--config.compute.pipeline={schedule}"],
    cwd=root, env=fake_devices_env(8), capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])["compiled"]["memory_per_device"]["peak"]


def test_1f1b_holds_fewer_activations_than_the_forward_then_backward_loop(root):
  """16 micro-batches on 2 stages: 1F1B keeps at most 3 chunk inputs per stage, the
  circular loop one per iteration (17)."""
  assert _peak(root, "1f1b") < 0.7 * _peak(root, "circular")
