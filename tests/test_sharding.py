"""The same train steps on 1 device and on 8 (fake CPU) devices give the same
losses and the same params, for a dense and an MoE (MLA + MTP + aux-free bias)
tiny model, over the meshes (data, fsdp, tensor, expert) of the spec (the MoE model
on those with an expert axis), and for DeepSeek Sparse Attention and the
linear-attention layers on one mixed mesh; and with the sequence split over
`context` (data=2, context=4) for full and sliding-window attention (llama3,
gemma3), MLA + DSA (deepseek_v32) and gated DeltaNet (qwen3_next)."""

import numpy as np
import pytest

from tests.conftest import CONTEXT, EXPERT_CONTEXT, MESHES, SINGLE, run_on_mesh

# Llama 3 over every mesh; the MoE model over the meshes with an expert axis (pure
# data and pure fsdp shard it like the dense model, and cost CI minutes).
CASES = [("llama3", m) for m in MESHES] + [("deepseek_v3", m) for m in MESHES if m["expert"] > 1]
CASES += [("llama3", CONTEXT), ("gemma3", CONTEXT), ("deepseek_v3", EXPERT_CONTEXT)]
# Windows that cut across the context chunks (8 positions each at seq 64); DeltaNet
# chunks that tile each device's 16 positions, so the state passes between devices.
MODEL = {"gemma3": dict(sliding_window=12), "qwen3_next": dict(linear=dict(chunk=8))}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """family -> its 1-device run, made once per module (per xdist worker)."""
  runs = {}

  def get(family):
    if family not in runs:
      runs[family] = run_on_mesh(
        tmp_path_factory.mktemp(family), family, SINGLE, devices=1, model=MODEL.get(family)
      )
    return runs[family]

  return get


@pytest.mark.parametrize(
  "family, mesh", CASES, ids=lambda c: c if isinstance(c, str) else "x".join(map(str, c.values()))
)
def test_sharded_steps_match_single_device(tmp_path, single, family, mesh):
  """The MoE model on the mixed mesh also runs its batch as 2 micro-batches
  (gradient accumulation with expert parallelism) and its loss in 2 sequence chunks
  (the vocab split over `tensor`: XLA's partitioner), and with the sequence split
  in 4 loss chunks (each device's own tokens against the gathered head): still the
  1-device whole batch and whole-logits loss."""
  losses, params = single(family)
  micro = family == "deepseek_v3" and mesh == MESHES[2]
  chunks = 2 if micro else 4 if mesh == EXPERT_CONTEXT else None
  sharded_losses, sharded_params = run_on_mesh(
    tmp_path, family, mesh, devices=8, model=MODEL.get(family),
    train=dict(microbatches=2) if micro else None,
    compute=dict(loss_chunks=chunks) if chunks else None,
  )  # fmt: skip
  assert len(losses) == 3
  np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
  assert sharded_params.keys() == params.keys()
  tol = 5e-5 if micro else 1e-6  # sums in another order; a wrong one is off by lr = 3e-3
  for name, value in params.items():
    np.testing.assert_allclose(sharded_params[name], value, rtol=1e-5, atol=tol, err_msg=name)


@pytest.mark.parametrize("family", ["deepseek_v32", "qwen3_next"])
def test_attention_variants_sharded_steps_match_single_device(tmp_path, family):
  """On the mixed 8-device mesh and on data=2, context=4, equal to one device:
  DeepSeek Sparse Attention (indexer top-k inside each MLA layer, sharded top_k), and
  gated DeltaNet layers (3 layers, key heads and their value-head groups over
  `tensor`; the state passed between context devices). KDA runs the same
  chunked core with plain `heads` axes, so it is left out to keep CI short."""
  model = MODEL.get(family)
  losses, params = run_on_mesh(tmp_path, family, SINGLE, devices=1, model=model)
  # GLM-5 (DeepSeek-V3.2's skeleton) runs the mixed mesh in test_seed_families.py.
  for mesh in (MESHES[2], CONTEXT) if family == "qwen3_next" else (CONTEXT,):
    sharded_losses, sharded_params = run_on_mesh(tmp_path, family, mesh, devices=8, model=model)
    np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
    # Sums in another order: Adam normalises a few near-zero gradients (decay gates,
    # rare embedding rows, dt_bias ~1, the DeltaNet beta/alpha projection) and moves
    # those params up to ~2e-5 apart (CI saw 1.7e-5 on in_proj_ba), against steps of
    # lr = 3e-3; a wrong reduction would be off by a whole step.
    for name, value in params.items():
      np.testing.assert_allclose(sharded_params[name], value, rtol=5e-5, atol=5e-5, err_msg=name)
