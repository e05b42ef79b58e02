"""Specs for DeepSeek Sparse Attention (modeling/attention/sparse.py) in the
model: top-k selection, the two MLA forms and the kernels agree, gradients stay
where the stages put them, and both training stages run (warm-up trains only
the indexer and its KL falls)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx, traverse_util

from modeling import hf
from modeling.attention import sparse
from modeling.attention.mla import MLA
from modeling.config import Options, decoder_config
from modeling.context import Context
from modeling.decoder import Decoder
from tests import hf_common, hf_moe_cases
from tests.conftest import family_config, small_train_config
from trainer.trainer import Trainer


def _mla_config(stage="sparse", **indexer):
  config = family_config("deepseek_v32")
  config.model.mla.indexer.update(indexer)
  return decoder_config(config.model, Options(indexer_stage=stage)).blocks[0].attention


def _inputs(b=2, s=24, seed=0):
  x = jax.random.normal(jax.random.key(seed), (b, s, 128))
  seg = jnp.asarray(np.array([[1] * 15 + [2] * (s - 15), [1] * s]), jnp.int32)[:b]
  pos = jnp.asarray(np.array([list(range(15)) + list(range(s - 15)), list(range(s))]))[:b]
  return x, pos, seg


def test_select_keeps_the_best_visible_keys_and_breaks_ties_by_position():
  valid = sparse.valid_keys(jnp.asarray([[1, 1, 1, 2, 2, 2]]))
  scores = jnp.asarray([[[0.0, 5, 5, 9, 9, 9]] * 6], jnp.float32)
  indices = np.asarray(sparse.select(jnp.where(valid, scores, sparse.NEG), 2))[0]
  # Query 2 sees keys 0-2 (1 and 2 tie at 5 above 0); query 5 sees 3-5 (all 9: lowest two).
  assert indices.tolist() == [[0, -1], [1, 0], [1, 2], [3, -1], [3, 4], [3, 4]]


@pytest.mark.parametrize("stage", ["sparse", "warmup"])
def test_absorbed_form_and_sparse_kernel_equal_the_naive_form(stage):
  cfg = _mla_config(topk=6, stage=stage)
  naive = MLA(cfg, rngs=nnx.Rngs(0))
  x, pos, seg = _inputs()
  want, want_stats = naive(x, Context(pos, seg))
  for form in (dict(absorbed=True), dict(absorbed=True, kernel="pallas_interpret")):
    other = MLA(dataclasses.replace(cfg, **form), rngs=nnx.Rngs(1))
    nnx.update(other, nnx.state(naive))
    got, stats = other(x, Context(pos, seg))
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=str(form))
    np.testing.assert_allclose(stats["indexer_kl"], want_stats["indexer_kl"], rtol=1e-4)
    np.testing.assert_allclose(stats["max_logits"], want_stats["max_logits"], rtol=1e-4)


def test_sparse_attention_changes_the_output_and_all_keys_is_dense():
  """Top-k below the length changes the output; top-k = length equals dense MLA."""
  x, pos, seg = _inputs()
  dense_cfg = dataclasses.replace(_mla_config(), indexer=None)
  dense = MLA(dense_cfg, rngs=nnx.Rngs(0))
  want, _ = dense(x, Context(pos, seg))
  for topk, equal in ((24, True), (4, False)):
    model = MLA(_mla_config(topk=topk), rngs=nnx.Rngs(0))
    nnx.update(model, nnx.state(dense))
    got, _ = model(x, Context(pos, seg))
    assert np.allclose(got, want, atol=1e-5) == equal, topk


def _grads(model, x, pos, seg, which):
  def loss(model):
    out, stats = model(x, Context(pos, seg))
    return jnp.sum(out**2) if which == "output" else stats["indexer_kl"]

  grads = nnx.grad(loss)(model)
  flat = nnx.to_flat_state(grads)
  norm = lambda keep: sum(float(jnp.sum(v.get_value() ** 2)) for p, v in flat if keep(p))
  is_indexer = lambda p: "indexer" in p
  return norm(is_indexer), norm(lambda p: not is_indexer(p))


@pytest.mark.parametrize("stage", ["sparse", "warmup"])
def test_the_indexer_learns_only_from_its_kl_and_the_model_only_from_its_output(stage):
  model = MLA(_mla_config(topk=6, stage=stage), rngs=nnx.Rngs(0))
  x, pos, seg = _inputs()
  indexer, rest = _grads(model, x, pos, seg, "output")
  assert indexer == 0 and rest > 0
  indexer, rest = _grads(model, x, pos, seg, "kl")
  assert indexer > 0 and rest == 0


def test_fp8_indexer_scores_stay_close_and_the_hadamard_is_orthonormal():
  h = sparse.hadamard(32)
  np.testing.assert_allclose(h @ h.T, np.eye(32), atol=1e-6)
  cfg = _mla_config(topk=6)
  exact = MLA(cfg, rngs=nnx.Rngs(0))
  fp8 = MLA(dataclasses.replace(cfg, indexer=dataclasses.replace(cfg.indexer, fp8=True)),
            rngs=nnx.Rngs(0))  # fmt: skip
  x, pos, seg = _inputs()
  valid = sparse.valid_keys(seg)
  c_q = exact._query(x, pos)[0]
  want = exact.indexer(x, c_q, pos, valid)
  got = fp8.indexer(x, c_q, pos, valid)
  err = jnp.abs(got - want)[valid] / (jnp.abs(want[valid]).max())
  assert 0 < float(err.max()) < 0.05  # E4M3's 3 mantissa bits, one scale per vector


def _trainer(workdir, family="deepseek_v32", steps=30, init_from="", stage="sparse", **indexer):
  config = small_train_config(family, steps=steps, seq_len=64, log_every=1)
  config.model.mla.indexer.update(indexer)
  config.objective.indexer_stage = stage
  config.checkpoint.init_from = init_from
  return Trainer(config, str(workdir))


def _train(trainer):
  """-> (params before, params after, train records)."""
  before = jax.device_get(trainer.state["params"])
  trainer.run()
  lines = (trainer.workdir / "metrics.jsonl").read_text().splitlines()
  records = [r for r in map(json.loads, lines) if "loss" in r]
  return before, jax.device_get(trainer.state["params"]), records


def _flat(params) -> dict:
  return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(params).items()}


def test_warmup_trains_only_the_indexers_then_the_sparse_stage_starts_from_it(tmp_path):
  warmup = _trainer(tmp_path / "warmup", stage="warmup", topk=16)
  before, after, train = _train(warmup)
  before, after = _flat(before), _flat(after)
  indexer = [k for k in before if "indexer" in k]
  assert indexer and all(not np.array_equal(before[k], after[k]) for k in indexer)
  assert all(np.array_equal(before[k], after[k]) for k in before if "indexer" not in k)
  biases = _flat(jax.device_get(warmup.state["model_state"]))
  assert biases and all(np.all(b == 0) for b in biases.values())  # frozen routers: no bias steps
  kl = [float(np.mean(r["indexer_kl"])) for r in train]
  assert kl[-1] < 0.8 * kl[0], kl

  sparse_run = _trainer(
    tmp_path / "sparse", stage="sparse", topk=16, init_from=str(tmp_path / "warmup")
  )
  start, end, train = _train(sparse_run)
  start, end = _flat(start), _flat(end)
  assert all(np.array_equal(start[k], after[k]) for k in after)  # the warm-up's weights
  assert all(not np.array_equal(start[k], end[k]) for k in start)  # everything trains
  assert train[-1]["loss"] < train[0]["loss"] - 0.5
  assert len(train[-1]["indexer_kl"]) == 3  # 2 layers + the MTP block


def test_init_from_a_dense_mla_run_adds_fresh_indexers(tmp_path, capsys):
  """DeepSeek-V3.2 starts from a V3 checkpoint: every V3 weight carries over; the
  indexers, which V3 lacks, keep their init and are listed."""
  dense = _trainer(tmp_path / "v3", family="deepseek_v3", steps=6)
  dense.run()
  v3 = _flat(jax.device_get(dense.state["params"]))
  fresh = _flat(jax.device_get(_trainer(tmp_path / "fresh").state["params"]))
  started = _trainer(tmp_path / "v32", init_from=str(tmp_path / "v3"))
  got = _flat(jax.device_get(started.state["params"]))
  assert set(got) - set(v3) == {k for k in got if "indexer" in k} != set()
  for k, value in got.items():
    np.testing.assert_array_equal(value, v3[k] if k in v3 else fresh[k], err_msg=k)
  assert "not in its checkpoint keep their init" in capsys.readouterr().out
  assert int(started.state["step"]) == 0


def test_absorbed_form_on_the_sparse_kernel_matches_hf(tmp_path):
  """The HF parity case (top-8 of 32) in latent space on the Pallas sparse kernel."""
  case = hf_moe_cases.CASES["deepseek_v32"]
  hf_model = hf_common.build(case, tmp_path)
  config = hf.model_config_from_hf(json.loads((tmp_path / "config.json").read_text()))
  config.unlock()
  options = Options(mla_absorbed=True, attention_kernel="pallas_interpret")
  model = nnx.eval_shape(lambda: Decoder(decoder_config(config.model, options), rngs=nnx.Rngs(0)))
  hf.load_params(model, tmp_path)
  tokens = hf_common.tokens(2, hf_common.SEQ)
  with torch.no_grad():
    want = hf_model(input_ids=torch.as_tensor(tokens)).logits.numpy()
  got, _ = hf_common.ours(model, tokens)
  assert np.abs(got - want).max() <= hf_common.TOL
