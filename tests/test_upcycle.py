"""Sparse upcycling (trainer/upcycle.py): with identical experts (or fine-grained
segments), renormalised top-k, a zero router and no noise, the MoE's logits equal
the dense model's; the upcycled checkpoint trains on from the dense model's loss."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from modeling.decoder import Decoder
from tests.conftest import small_train_config
from trainer import precision, upcycle
from trainer.trainer import Trainer


def _moe(config, experts=4, top_k=2, granularity=1):
  moe = config.model.moe
  config.model.ffn_pattern = ("moe",)
  moe.update(num_experts=experts, top_k=top_k, norm_topk=True, router="softmax")
  moe.expert_mlp_dim = config.model.mlp_dim // granularity
  return config


def _model(config, params=None):
  model = Decoder(precision.model_config(config), rngs=nnx.Rngs(0))
  if params is not None:
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    model = nnx.merge(graphdef, nnx.State(params), rest)
  return model


@pytest.mark.parametrize("granularity,top_k", [(1, 2), (2, 2), (2, 4)])
def test_upcycled_moe_computes_the_dense_function(granularity, top_k):
  dense_cfg = small_train_config("llama3")
  moe_cfg = _moe(small_train_config("llama3"), experts=8, top_k=top_k, granularity=granularity)
  dense = _model(dense_cfg)
  flat = lambda m: traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(m, nnx.Param)))
  params = upcycle.upcycle_params(flat(dense), flat(_model(moe_cfg)), granularity=granularity)
  moe = _model(moe_cfg, traverse_util.unflatten_dict(params))
  tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 256)
  want, _ = dense(tokens)
  got, _ = moe(tokens)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # Symmetry breaking changes the function, a little.
  noisy = upcycle.upcycle_params(
    flat(dense), flat(_model(moe_cfg)), granularity=granularity, noise=0.1, router_init="noise"
  )
  got, _ = _model(moe_cfg, traverse_util.unflatten_dict(noisy))(tokens)
  assert 1e-4 < float(jnp.abs(got - want).max()) < 0.2 * float(jnp.abs(want).max())


def test_upcycled_run_starts_at_the_dense_loss(tmp_path):
  dense_cfg = small_train_config("llama3", steps=30)
  Trainer(dense_cfg, str(tmp_path / "dense")).run()
  moe_cfg = _moe(small_train_config("llama3", steps=10))
  dense_record = (tmp_path / "dense" / "config.json").read_text()
  step = upcycle.upcycle(moe_cfg, str(tmp_path / "dense"), str(tmp_path / "moe"))
  assert step == 30
  assert (tmp_path / "dense" / "config.json").read_text() == dense_record  # source untouched
  with pytest.raises(ValueError, match="already has checkpoints"):
    upcycle.upcycle(moe_cfg, str(tmp_path / "dense"), str(tmp_path / "moe"))
  # The first eval of the MoE run (step 0 weights seen at step 10's batches) vs dense.
  upcycled = Trainer(moe_cfg, str(tmp_path / "moe"))
  assert int(upcycled.state["step"]) == 0
  dense = Trainer(upcycle.dense_config(moe_cfg), str(tmp_path / "dense"))
  from trainer import pipeline  # noqa: PLC0415

  batches = pipeline.eval_batches(moe_cfg.data, batch_size=4, seq_len=64, max_batches=2)
  np.testing.assert_allclose(upcycled.evaluate(batches), dense.evaluate(batches), rtol=1e-5)
  result = upcycled.run()
  assert result["train"]["step"] == 10 and np.isfinite(result["train"]["loss"])
  records = [json.loads(x) for x in (tmp_path / "moe" / "metrics.jsonl").read_text().splitlines()]
  scratch = Trainer(moe_cfg, str(tmp_path / "scratch")).run()
  assert records[-1]["eval_loss"] < scratch["eval"]["eval_loss"]


def test_bad_upcycling_shapes_name_the_field():
  config = _moe(small_train_config("llama3"), granularity=2)
  with pytest.raises(ValueError, match=r"model.moe.expert_mlp_dim=64 must be model.mlp_dim=128"):
    upcycle.check(config, granularity=1, router_init="zeros")
