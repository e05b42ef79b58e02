"""Top-k routers (softmax, sigmoid with group-limited selection, softmax over the top-k logits).

Logits may be soft-capped (cap * tanh(logits / cap)) before any of them.

Every kind selects on a score plus the optional aux-free bias (selection only)
and weights the selected experts by the unbiased score. Logits, scores and
weights are float32. Letters: t tokens, e embed, x experts (E), k slots.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.layers import params
from modeling.moe.config import MoeConfig
from parallelism import rules


class RouterBias(nnx.Variable):
  """DeepSeek-V3 aux-free selection bias [E]: state, never a Param, never differentiated."""


def aux_free_update(bias, load, rate: float):
  """b_i += rate * sign(mean(c) - c_i) over the last axis (loads summed over the global batch)."""
  load = load.astype(jnp.float32)
  return bias + rate * jnp.sign(jnp.mean(load, axis=-1, keepdims=True) - load)


def _group_limit(biased, n_group: int, topk_group: int):
  """Masks (-inf) the experts outside each token's topk_group best groups.

  A group's score is the sum of its top-2 biased scores (top-1 for 1-expert groups).
  """
  t, E = biased.shape
  grouped = biased.reshape(t, n_group, E // n_group)  # [t, g, E/g]
  group_score = rules.top_k(grouped, min(2, E // n_group))[0].sum(-1)  # [t, g]
  _, keep = rules.top_k(group_score, topk_group)  # [t, topk_group]
  keep = jax.nn.one_hot(keep, n_group, dtype=jnp.bool_).any(-2)  # [t, g]
  return jnp.where(keep[:, :, None], grouped, -jnp.inf).reshape(t, E)


def _aux_losses(logits, probs, indices, batch_shape, E: int):
  """seq_aux (DeepSeek eq. 17-20 per sequence), switch_aux, router_z and load.

  probs [t, E] are the router's affinities normalised over experts; the
  indicator 1[i selected] is the actual routing mask (bias and group limit
  included, Megatron's choice), without gradient.
  """
  t, k = indices.shape
  b, s = batch_shape or (1, t)
  mask = jax.nn.one_hot(indices, E, dtype=jnp.float32).sum(-2)  # [t, E]
  load = mask.sum(0)  # [E]
  f_seq = mask.reshape(b, s, E).sum(1) * (E / (k * s))  # [b, E]
  p_seq = probs.reshape(b, s, E).mean(1)  # [b, E]
  seq_aux = jnp.mean(jnp.sum(f_seq * p_seq, -1))
  switch_aux = E * jnp.sum(load / (t * k) * probs.mean(0))  # 1.0 when balanced
  router_z = jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)
  return dict(load=load, seq_aux=seq_aux, switch_aux=switch_aux, router_z=router_z)


class Router(nnx.Module):
  def __init__(self, cfg: MoeConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.cfg = cfg
    e, E = cfg.embed_dim, cfg.num_experts
    self.kernel = params.normal(rngs, (e, E), ("embed", "experts"), cfg.init_std, param_dtype)
    if cfg.router_bias:
      self.bias = params.constant(0.0, (E,), ("experts",), param_dtype)
    if cfg.aux_free_bias:
      self.aux_free_bias = RouterBias(jnp.zeros((E,), jnp.float32), axes=("experts",))

  def logits(self, x):  # x: [t, e] -> [t, E] float32
    logits = x.astype(jnp.float32) @ self.kernel[...].astype(jnp.float32)
    if self.cfg.router_bias:
      logits = logits + self.bias[...].astype(jnp.float32)
    if self.cfg.router_softcap > 0:
      logits = self.cfg.router_softcap * jnp.tanh(logits / self.cfg.router_softcap)
    return logits

  def _selection_bias(self):
    if not self.cfg.aux_free_bias:
      return 0.0
    return jax.lax.stop_gradient(self.aux_free_bias[...].astype(jnp.float32))

  def __call__(self, x, batch_shape=None):
    """x: [t, e] -> (weights [t, k] f32, indices [t, k] int32, stats).

    batch_shape (b, s) with b*s == t gives seq_aux its sequences; None = one sequence.
    """
    cfg = self.cfg
    logits = self.logits(x)  # [t, E]
    if cfg.router == "sigmoid":
      scores = jax.nn.sigmoid(logits)
      probs = scores / jnp.sum(scores, -1, keepdims=True)
    elif cfg.router == "softmax":
      scores = probs = jax.nn.softmax(logits, axis=-1)
    else:  # softmax_topk: the weights are a softmax over the selected logits.
      scores, probs = logits, jax.nn.softmax(logits, axis=-1)
    biased = scores + self._selection_bias()
    if cfg.n_group > 1:
      biased = _group_limit(biased, cfg.n_group, cfg.topk_group)
    _, indices = rules.top_k(biased, cfg.top_k)  # [t, k]
    weights = jnp.take_along_axis(scores, indices, axis=-1)  # unbiased
    if cfg.router == "softmax_topk":
      weights = jax.nn.softmax(weights, axis=-1)
    elif cfg.norm_topk:
      weights = weights / (jnp.sum(weights, -1, keepdims=True) + 1e-20)
    weights = weights * cfg.routed_scaling
    stats = _aux_losses(logits, probs, indices, batch_shape, cfg.num_experts)
    return weights, indices.astype(jnp.int32), stats
