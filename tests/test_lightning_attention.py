"""Specs for modeling/attention/lightning.py (MiniMax-01's lightning attention):
the chunked form equals the quadratic one, packed documents stay apart, and the
layer equals transformers' MiniMaxLightningAttention with the same weights."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.minimax import modeling_minimax

from modeling.attention import lightning
from modeling.attention.linear import DeltaNetConfig
from modeling.context import Context


def _qkvr(b=2, s=37, h=3, d=8, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((b, s, h, d)), jnp.float32) for _ in range(3))
  return q, k, v, lightning.decay_rates(h, 1, 4)


@pytest.mark.parametrize("chunk", [4, 16, 64])
def test_chunked_equals_reference_with_packed_documents(chunk):
  """Documents of 5, 20 and 12 tokens in one row (boundaries inside and across
  chunks, a partial last chunk), one document in the other."""
  q, k, v, rates = _qkvr()
  seg = jnp.asarray([[1] * 5 + [2] * 20 + [3] * 12, [1] * 37], jnp.int32)
  want = lightning.reference(q, k, v, rates, segment_ids=seg)
  got = lightning.chunked(q, k, v, rates, chunk=chunk, segment_ids=seg)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_document_reads_nothing_of_the_one_before():
  q, k, v, rates = _qkvr()
  seg = jnp.asarray([[1] * 10 + [2] * 27] * 2, jnp.int32)
  alone = lightning.chunked(
    q[:, 10:], k[:, 10:], v[:, 10:], rates, chunk=8, segment_ids=seg[:, 10:]
  )
  packed = lightning.chunked(q, k, v, rates, chunk=8, segment_ids=seg)
  np.testing.assert_allclose(packed[:, 10:], alone, rtol=1e-5, atol=1e-5)


def test_rates_are_alibi_slopes_shrinking_with_depth():
  first, last = lightning.decay_rates(8, 0, 10), lightning.decay_rates(8, 9, 10)
  np.testing.assert_allclose(first, 2.0 ** (-np.arange(1, 9)) * (1 + 1e-5), rtol=1e-6)
  np.testing.assert_array_less(last, 1e-4 * first)  # the last layer keeps ~1e-5 of each


@pytest.mark.parametrize("layer", [0, 2])
def test_layer_matches_transformers_minimax_lightning_attention(layer):
  """Random weights (norm scale too), 3 layers so the depth factor differs per layer;
  HF's block size 16 over 40 tokens, ours chunk 8: both are exact forms."""
  h, d, e, s = 4, 8, 32, 40
  hf_cfg = transformers.MiniMaxConfig(
    hidden_size=e, num_attention_heads=h, head_dim=d, num_hidden_layers=3, block_size=16
  )
  torch.manual_seed(layer)
  theirs = modeling_minimax.MiniMaxLightningAttention(hf_cfg, layer).eval().float()
  with torch.no_grad():
    for p in theirs.parameters():
      p.normal_(0.0, p.shape[-1] ** -0.5) if p.ndim > 1 else p.add_(0.2 * torch.randn_like(p))
  cfg = DeltaNetConfig(e, h, h, d, d, chunk=8, norm_eps=1e-6, kind="lightning", num_layers=3)
  ours = lightning.LightningAttention(cfg, rngs=nnx.Rngs(0))
  weight = lambda m: m.weight.detach().numpy().T  # [in, out]
  ours.qkv_proj[...] = jnp.asarray(weight(theirs.qkv_proj).reshape(e, h, 3 * d))
  ours.output_gate[...] = jnp.asarray(weight(theirs.output_gate).reshape(e, h, d))
  ours.out_proj[...] = jnp.asarray(weight(theirs.out_proj).reshape(h, d, e))
  ours.norm.scale[...] = jnp.asarray(theirs.norm.weight.detach().numpy())
  x = np.random.default_rng(1).standard_normal((2, s, e)).astype(np.float32)
  with torch.no_grad():
    want = theirs(torch.as_tensor(x), None, None)[0].numpy()
  seg = jnp.ones((2, s), jnp.int32)
  got, _ = ours(jnp.asarray(x), Context(None, seg, layer=layer))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
