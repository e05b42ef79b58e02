"""Specs for modeling/layers/grouped.py: the padded-block grouped matmul equals
jax.lax.ragged_dot (values and gradients) and costs about the rows it has, not
E times them; `auto` resolves per platform; a bad choice is one error naming
compute.moe_matmul."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from modeling.layers import grouped
from modeling.moe import Experts
from modeling.moe.config import MoeConfig
from trainer import precision


def _case(m, E, rows_used, seed=0):
  rng = np.random.default_rng(seed)
  sizes = rng.multinomial(rows_used, np.ones(E) / E) if rows_used else np.zeros(E)
  x = rng.normal(size=(m, 12)).astype(np.float32)
  w = rng.normal(size=(E, 12, 5)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(w), jnp.asarray(sizes, jnp.int32)


@pytest.mark.parametrize(
  "m,E,rows_used",
  [(1000, 7, 1000), (1000, 7, 913), (64, 16, 50), (300, 3, 0), (257, 5, 257)],
)
def test_blocks_equal_ragged_dot_values_and_gradients(m, E, rows_used):
  x, w, sizes = _case(m, E, rows_used)

  def loss(method):
    return lambda x, w: jnp.sum(jnp.sin(grouped.ragged_dot(x, w, sizes, method)))

  want = jax.value_and_grad(loss("ragged_dot"), argnums=(0, 1))(x, w)
  got = jax.jit(jax.value_and_grad(loss("blocks"), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
  for g, r in zip(got[1], want[1]):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)
  assert not np.any(grouped.ragged_dot(x, w, sizes, "blocks")[int(sizes.sum()) :])


def test_one_expert_with_every_row_and_empty_neighbours():
  x, w, _ = _case(200, 4, 200)
  sizes = jnp.asarray([0, 200, 0, 0], jnp.int32)
  np.testing.assert_allclose(
    grouped.ragged_dot(x, w, sizes, "blocks"), x @ w[1], rtol=1e-5, atol=1e-5
  )


def _flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_blocks_cost_about_the_rows_not_every_expert():
  m, E, k, n = 4096, 16, 64, 32
  x, w = jnp.ones((m, k)), jnp.ones((E, k, n))
  sizes = jnp.full((E,), m // E, jnp.int32)
  useful = 2 * m * k * n
  blocks = _flops(lambda x, w: grouped.ragged_dot(x, w, sizes, "blocks"), x, w)
  assert blocks < 1.3 * useful  # m + E * block rows, block <= m / (8E)
  if jax.default_backend() == "cpu":  # XLA:CPU expands ragged_dot over every expert
    dense = _flops(lambda x, w: jax.lax.ragged_dot(x, w, sizes), x, w)
    assert dense > 4 * useful


def test_block_rows_keep_padding_under_an_eighth_where_they_can():
  assert grouped.block_rows(16384, 16) == 128
  assert grouped.block_rows(4096, 16) == 32
  assert grouped.block_rows(64, 16) == grouped.MIN_BLOCK
  for m, E in [(16384, 16), (4096, 16), (100_000, 64)]:
    assert E * grouped.block_rows(m, E) <= m / 8


def test_auto_is_ragged_dot_on_tpu_and_blocks_elsewhere():
  assert grouped.resolve("auto", "tpu") == "ragged_dot"
  assert grouped.resolve("auto", "gpu") == "blocks"
  assert grouped.resolve("auto", "cpu") == "blocks"
  assert grouped.resolve("ragged_dot", "cpu") == "ragged_dot"


def test_experts_give_the_same_output_and_grads_with_either_matmul():
  cfg = MoeConfig(embed_dim=16, num_experts=8, top_k=2, expert_mlp_dim=12, expert_bias=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (40, 16))
  idx = jax.random.randint(jax.random.PRNGKey(1), (40, 2), 0, 8)
  wts = jax.random.uniform(jax.random.PRNGKey(2), (40, 2))
  outs = []
  for method in ("ragged_dot", "blocks"):
    experts = Experts(dataclasses.replace(cfg, matmul=method), rngs=nnx.Rngs(0))
    for name in ("gate_bias", "up_bias", "down_bias"):  # biases start at zero
      getattr(experts, name)[...] = jax.random.normal(
        jax.random.PRNGKey(3), getattr(experts, name).shape
      )
    graph, state = nnx.split(experts)
    f = lambda s, x: jnp.sum(nnx.merge(graph, s)(x, wts, idx)[0] ** 2)
    outs.append(jax.value_and_grad(f, argnums=(0, 1))(state, x))
  (l0, (gs0, gx0)), (l1, (gs1, gx1)) = outs
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  np.testing.assert_allclose(gx1, gx0, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gs1), jax.tree.leaves(gs0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bad_moe_matmul_is_one_error_naming_the_field():
  config = base.get_config()
  config.compute.moe_matmul = "megablox"
  with pytest.raises(
    ValueError, match=r"compute.moe_matmul='megablox' is not valid; use one of auto"
  ):
    precision.model_config(config)


def test_blocks_past_the_gather_limit_loop_with_the_same_values_and_less_memory(monkeypatch):
  """Where a per-block copy of the weights would pass grouped.GATHER_LIMIT, the
  blocks run one at a time: the same values and gradients, and no [blocks, K, N]
  buffer in the compiled forward + backward."""
  m, E, K, N = 2048, 4, 128, 1024
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(m, K)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(E, K, N)), jnp.float32)
  sizes = jnp.asarray([700, 0, 1000, 348], jnp.int32)
  loss = lambda x, w: jnp.sum(jnp.sin(grouped.ragged_dot(x, w, sizes, "blocks")))
  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  batched = grad(x, w)
  batched_temp = grad.lower(x, w).compile().memory_analysis().temp_size_in_bytes
  monkeypatch.setattr(grouped, "GATHER_LIMIT", 0)
  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  looped = grad(x, w)
  looped_temp = grad.lower(x, w).compile().memory_analysis().temp_size_in_bytes
  np.testing.assert_allclose(looped[0], batched[0], rtol=1e-5)
  for a, b in zip(looped[1], batched[1], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  blocks = m // grouped.block_rows(m, E) + E
  assert looped_temp < batched_temp - blocks * K * N * 4 // 2, (looped_temp, batched_temp)
