"""DeepSeek Sparse Attention (V3.2): the lightning indexer and top-k selection.

The indexer scores every (query t, key s) pair with its own small heads:

  I[t, s] = sum_j w[t, j] * relu(q_I[t, j] . k_I[s] / sqrt(D)),  w = x W_w / sqrt(H)

q_I reads MLA's normed query latent c_q (H heads of D dims); k_I = LayerNorm(x W_k)
is one key head shared by all of them; both take RoPE on their leading rope
dims (half-split pairs in V3.2, interleaved ones in GLM-5). With `fp8`, q_I and k_I are Hadamard-rotated (dot products
are unchanged) and rounded to E4M3 with one scale per D-vector, as V3.2 caches
them. Each query keeps its `topk` best causal keys; MLA then attends to those
only (`pallas_kernels/sparse_attention`, MQA over the latent when absorbed).

Training stages (IndexerConfig.stage):
- warmup: attention stays dense; the indexer learns KL(p || softmax(I)), p the
  main attention's probabilities summed over heads and L1-normalised (the
  trainer freezes every other parameter);
- sparse: attention over the top-k; the same KL on the selected keys.
In both the indexer's inputs are detached and p carries no gradient: the
indexer learns only from its KL, the model only from the LM loss.

Letters: b batch, s/t query/key positions, e embed, l q_lora rank, j indexer
heads, d indexer head dim, k selected slots, h attention heads.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from modeling.attention.dot_product import attention_mask
from modeling.layers import params, rope
from modeling.layers.fp8 import qdq
from modeling.layers.norms import LayerNorm
from modeling.layers.rope import RopeConfig
from parallelism import rules

STAGES = ("warmup", "sparse")


@dataclasses.dataclass(frozen=True)
class IndexerConfig:
  num_heads: int  # indexer heads H (V3.2: 64).
  head_dim: int  # D (V3.2: 128).
  topk: int  # keys each query keeps (V3.2: 2048).
  rope: RopeConfig  # RoPE on the leading qk_rope_head_dim dims (half-split unless
  #   rope.interleave: GLM-5 rotates interleaved pairs).
  stage: str = "sparse"  # warmup (dense attention, indexer learns) | sparse (top-k).
  fp8: bool = False  # Hadamard-rotate q/k, then E4M3 with one scale per D-vector.
  init_std: float = 0.02


NEG = -1e30  # a masked score: finite, so log-softmax never meets -inf - -inf


def hadamard(n: int) -> np.ndarray:
  """The n x n Sylvester-Hadamard matrix / sqrt(n) (orthonormal; n a power of two)."""
  h = np.ones((1, 1), np.float32)
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return h / np.sqrt(n)


class Indexer(nnx.Module):
  def __init__(self, cfg: IndexerConfig, embed_dim: int, q_lora_rank: int, *, rngs, param_dtype):
    self.cfg = cfg
    j, d, std = cfg.num_heads, cfg.head_dim, cfg.init_std
    normal = lambda shape, axes: params.normal(rngs, shape, axes, std, param_dtype)
    self.wq_b = normal((q_lora_rank, j, d), ("q_lora", "index_heads", "index_head_dim"))
    self.wk = normal((embed_dim, d), ("embed", "index_head_dim"))
    self.k_norm = LayerNorm(d, 1e-6, param_dtype=param_dtype, axis_name="index_head_dim")
    self.weights_proj = normal((embed_dim, j), ("embed", "index_heads"))

  def _fp8(self, x):  # [..., d]: rotate, then one E4M3 scale per vector
    x = x @ jnp.asarray(hadamard(self.cfg.head_dim))
    return qdq(x[..., None, :], (1, self.cfg.head_dim))[..., 0, :]

  def __call__(self, x, c_q, positions, valid):
    """x: [b, s, e], c_q: [b, s, l], valid: [b, s, t] bool -> scores [b, s, t] float32,
    NEG where not valid. Inputs are detached: only the indexer's own loss trains it."""
    return self.scores(x, c_q, positions, self.keys(x, positions), valid)

  def keys(self, x, positions):
    """x: [b, t, e] -> the indexer's keys [b, t, d] float32 (what a decode cache holds)."""
    x = jax.lax.stop_gradient(x).astype(jnp.float32)
    k = self.k_norm(x @ self.wk[...].astype(jnp.float32))[:, :, None, :]  # [b, t, 1, d]
    k = rope.apply(k, positions, self.cfg.rope)[:, :, 0]
    return self._fp8(k) if self.cfg.fp8 else k

  def scores(self, x, c_q, positions, k, valid):
    """Queries of x [b, s, e] / c_q [b, s, l] at `positions` against keys k
    [b, t, d] -> scores [b, s, t], NEG where not valid [b, s, t]."""
    cfg, f32 = self.cfg, jnp.float32
    x, c_q = jax.lax.stop_gradient(x).astype(f32), jax.lax.stop_gradient(c_q).astype(f32)
    q = jnp.einsum("bsl,ljd->bsjd", c_q, self.wq_b[...].astype(f32))
    q = rope.apply(q, positions, cfg.rope)
    if cfg.fp8:
      q = self._fp8(q)
    logits = jnp.einsum("bsjd,btd->bsjt", q, k) * cfg.head_dim**-0.5
    w = (x @ self.weights_proj[...].astype(f32)) * cfg.num_heads**-0.5  # [b, s, j]
    scores = jnp.einsum("bsj,bsjt->bst", w, jax.nn.relu(logits))
    return jnp.where(valid, scores, NEG)


def valid_keys(segment_ids, window: int = 0):
  """[b, s, t] bool: causal, same document, within the window if > 0."""
  return attention_mask(segment_ids, window)[:, 0, 0]


def select(scores, topk: int):
  """scores [b, s, t] (NEG = not a key) -> indices [b, s, topk] of the best keys,
  -1 in slots left over when a query has fewer valid keys. Ties go to the lower
  position (lax.top_k), so the choice is deterministic."""
  top, indices = rules.top_k(scores, topk)
  return jnp.where(top > NEG / 2, indices, -1)


def slot_scores(scores, indices):
  """scores [b, s, t] at indices [b, s, k] -> [b, s, k], NEG in empty slots."""
  picked = jnp.take_along_axis(scores, jnp.maximum(indices, 0), axis=-1)
  return jnp.where(indices >= 0, picked, NEG)


def dense_probs(q, k, *, valid, scale: float):
  """The indexer's warm-up target: dense attention probabilities of q [b, s, h, d]
  over k [b, t, kh, d], summed over heads and L1-normalised: [b, s, t], no gradient."""
  q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
  b, s, h, d = q.shape
  kh = k.shape[2]
  q = q.reshape(b, s, kh, h // kh, d)
  logits = jnp.einsum("bskgd,btkd->bkgst", q, k, preferred_element_type=jnp.float32) * scale
  p = jax.nn.softmax(jnp.where(valid[:, None, None], logits, NEG), axis=-1).sum(axis=(1, 2))
  return p / p.sum(-1, keepdims=True)


def kl_loss(p, scores, segment_ids):
  """Mean over real tokens of KL(p || softmax(scores)); p, scores: [b, s, n] with
  p = 0 and scores = NEG outside the keys considered."""
  log_q = jax.nn.log_softmax(scores, axis=-1)
  kl = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - log_q), 0.0), axis=-1)
  real = (segment_ids != 0).astype(jnp.float32)
  return jnp.sum(kl * real) / jnp.maximum(jnp.sum(real), 1.0)
