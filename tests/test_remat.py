"""Remat policies change what the backward pass stores, never the numbers: every
policy gives the no-remat loss and gradients, and full remat needs less scratch
memory in the compiled step, with the layers scanned or unrolled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling.config import Options, decoder_config
from modeling.decoder import Decoder
from modeling.losses import cross_entropy
from tests.conftest import family_config
from trainer.objective import Objective, moe_terms

POLICIES = ("none", "full", "save_dots", "save_attention_outputs", "offload_dots")


def _loss_and_grad(family: str, remat: str, seq: int = 32, scan: bool = True):
  config = family_config(family)
  config.model.update(num_layers=4)
  cfg = decoder_config(config.model, Options(remat=remat, scan_layers=scan))
  graphdef, params, rest = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  tokens = jax.random.randint(jax.random.key(1), (2, seq + 1), 0, cfg.vocab_size)

  def loss_fn(params, rest):  # non-param state (MoE biases) passed in, as in the train step
    logits, aux = nnx.merge(graphdef, params, rest)(tokens[:, :-1])
    loss, _ = cross_entropy(logits, tokens[:, 1:], jnp.ones((2, seq)))
    return loss + moe_terms(Objective(seq_aux=1e-4), cfg, aux).get("aux_loss", 0.0)

  return jax.jit(jax.value_and_grad(loss_fn)), (params, rest)


@pytest.mark.parametrize("family", ["llama3", "deepseek_v3"])
def test_every_policy_gives_the_same_loss_and_grads(family):
  fn, args = _loss_and_grad(family, "none")
  loss, grads = fn(*args)
  for policy in POLICIES[1:]:
    fn, args = _loss_and_grad(family, policy)
    other_loss, other_grads = fn(*args)
    np.testing.assert_allclose(other_loss, loss, rtol=1e-6, err_msg=policy)
    for a, b in zip(jax.tree.leaves(other_grads), jax.tree.leaves(grads), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7, err_msg=policy)


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_full_remat_needs_less_scratch_memory(scan):
  """Scanned periods and unrolled layers (DeepSeek's dense prefix, `scan_layers=unroll`)
  alike. Unrolled, XLA keeps less of the no-remat step's activations to begin with
  (79.1 MB of temporaries, 72.9 with full remat); without remat on unrolled layers
  the two compile to the same program."""
  temp = {}
  for policy in ("none", "full"):
    fn, args = _loss_and_grad("llama3", policy, seq=256, scan=scan)
    temp[policy] = fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
  assert temp["full"] < (0.8 if scan else 0.95) * temp["none"], temp


@pytest.mark.parametrize(
  "remat,kept", [("save_dots", "named 'linear_out'"), ("offload_dots", "f32<host>")]
)
def test_dot_policies_keep_the_linear_layers_outputs(remat, kept, capsys):
  """A linear layer is a custom_vjp (modeling/layers/linear.py), not a bare dot: the
  dot policies keep its output (on host for offload_dots), as they keep a dot's."""
  from jax.ad_checkpoint import print_saved_residuals  # noqa: PLC0415

  from modeling.decoder import REMAT_POLICIES  # noqa: PLC0415
  from modeling.layers import linear  # noqa: PLC0415

  def mlp(x, w1, w2):
    return jnp.sum(linear.matmul(jnp.tanh(linear.matmul(x, w1)), w2))

  args = jnp.ones((8, 16)), jnp.ones((16, 32)), jnp.ones((32, 16))
  print_saved_residuals(jax.checkpoint(mlp, policy=REMAT_POLICIES[remat]), *args)
  saved = [line for line in capsys.readouterr().out.splitlines() if "argument" not in line]
  assert len(saved) == 1 and kept in saved[0] and "[8,32]" in saved[0], saved
