"""Model components against plain numpy references, and decoder invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling.attention.dot_product import dot_product_attention
from modeling.config import Options, decoder_config
from modeling.decoder import Decoder
from modeling.layers import rope
from modeling.layers.rope import RopeConfig
from tests.conftest import family_config


def reference_attention(q, k, v, segment_ids, scale, window=0, softcap=0.0, sinks=None):
  """Loop-per-head numpy attention: q [b,s,h,d], k/v [b,s,k,d] -> (out, max raw logit [h])."""
  b, s, h, d = q.shape
  group = h // k.shape[2]
  out = np.zeros_like(q)
  max_logits = np.full(h, -np.inf)
  for bi in range(b):
    for hi in range(h):
      logits = q[bi, :, hi] @ k[bi, :, hi // group].T * scale
      i, j = np.arange(s)[:, None], np.arange(s)[None, :]
      allowed = (j <= i) & (segment_ids[bi][:, None] == segment_ids[bi][None, :])
      if window:
        allowed &= i - j < window
      max_logits[hi] = max(max_logits[hi], logits[allowed].max())
      if softcap:
        logits = softcap * np.tanh(logits / softcap)
      i, j = np.arange(s)[:, None], np.arange(s)[None, :]
      allowed = (j <= i) & (segment_ids[bi][:, None] == segment_ids[bi][None, :])
      if window:
        allowed &= i - j < window
      logits = np.where(allowed, logits, -np.inf)
      m = logits.max(-1, keepdims=True)
      if sinks is not None:
        m = np.maximum(m, sinks[hi])
      p = np.exp(logits - m)
      denom = p.sum(-1, keepdims=True) + (np.exp(sinks[hi] - m) if sinks is not None else 0)
      out[bi, :, hi] = (p / denom) @ v[bi, :, hi // group]
  return out, max_logits


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 1), (8, 2)])
@pytest.mark.parametrize(
  "window,softcap,sinks", [(0, 0.0, False), (5, 0.0, False), (0, 3.0, False), (4, 0.0, True)]
)
def test_attention_matches_reference(heads, kv_heads, window, softcap, sinks):
  rng = np.random.default_rng(0)
  b, s, d = 2, 13, 8
  q = rng.normal(size=(b, s, heads, d)).astype(np.float32)
  k = rng.normal(size=(b, s, kv_heads, d)).astype(np.float32)
  v = rng.normal(size=(b, s, kv_heads, d)).astype(np.float32)
  seg = np.array([[1] * 6 + [2] * 7, [1] * 13])
  sink_logits = rng.normal(size=(heads,)).astype(np.float32) if sinks else None
  got, got_max = dot_product_attention(
    jnp.asarray(q),
    jnp.asarray(k),
    jnp.asarray(v),
    segment_ids=jnp.asarray(seg),
    scale=d**-0.5,
    window=window,
    softcap=softcap,
    sinks=None if sink_logits is None else jnp.asarray(sink_logits),
  )
  want, want_max = reference_attention(q, k, v, seg, d**-0.5, window, softcap, sink_logits)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got_max), want_max, rtol=1e-5)  # before softcap


def test_partial_rotary_turns_only_leading_dims():
  x = jax.random.normal(jax.random.key(0), (1, 5, 2, 16))
  pos = jnp.arange(5)[None]
  partial = rope.apply(x, pos, RopeConfig(theta=100.0, rotary_dim=8))
  full_of_slice = rope.apply(x[..., :8], pos, RopeConfig(theta=100.0, rotary_dim=8))
  np.testing.assert_array_equal(partial[..., 8:], x[..., 8:])
  np.testing.assert_allclose(partial[..., :8], full_of_slice, atol=1e-6)
  # A rotation keeps each (i, i + 4) pair's norm.
  norms = lambda y: jnp.hypot(y[..., :4], y[..., 4:8])
  np.testing.assert_allclose(norms(partial), norms(x), atol=1e-5)


def _model(family, scan_layers=True, **overrides):
  config = family_config(family)
  config.model.update(overrides)
  return Decoder(decoder_config(config.model, Options(scan_layers=scan_layers)), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("family", ["llama3", "gemma3"])
def test_packed_documents_never_attend_across(family):
  model = _model(family, num_layers=2 if family == "llama3" else 6)
  doc_a = jax.random.randint(jax.random.key(1), (1, 9), 0, 256)
  doc_b = jax.random.randint(jax.random.key(2), (1, 11), 0, 256)
  packed = jnp.concatenate([doc_a, doc_b], axis=1)
  seg = jnp.asarray([[1] * 9 + [2] * 11])
  pos = jnp.asarray([list(range(9)) + list(range(11))])
  together, _ = model(packed, positions=pos, segment_ids=seg)
  alone, _ = model(doc_b)
  np.testing.assert_allclose(together[:, 9:], alone, atol=1e-5)
  changed, _ = model(packed.at[0, 3].set((packed[0, 3] + 1) % 256), positions=pos, segment_ids=seg)
  np.testing.assert_array_equal(changed[:, 9:], together[:, 9:])


def _unstack(params, period, num_periods):
  """Scanned params -> the unscanned model's `tail` layout."""
  tail = {}
  for j, block in params["stack"]["blocks"].items():
    for p in range(num_periods):
      tail[p * period + j] = jax.tree.map(lambda x: x[p], block)
  for j, block in params.get("tail", {}).items():
    tail[num_periods * period + j] = block
  out = {k: v for k, v in params.items() if k not in ("stack", "tail")}
  out["tail"] = tail
  return out


def test_scanned_decoder_equals_unrolled():
  scanned = _model("gemma3", num_layers=8)  # one scanned period of 6, two tail layers
  unrolled = _model("gemma3", num_layers=8, scan_layers=False)
  params = nnx.to_pure_dict(nnx.state(scanned))
  nnx.update(unrolled, nnx.to_pure_dict(nnx.state(unrolled)) | _unstack(params, 6, 1))
  tokens = jax.random.randint(jax.random.key(3), (2, 70), 0, 256)  # longer than the window 64
  np.testing.assert_allclose(scanned(tokens)[0], unrolled(tokens)[0], atol=1e-5)


def test_layer_patterns_expand_per_layer():
  config = family_config("gemma3", "27b")
  blocks = decoder_config(config.model).blocks
  windows = [b.attention.window for b in blocks]
  assert len(blocks) == 62 and windows[:6] == [1024] * 5 + [0] and windows[60:] == [1024, 1024]
  assert blocks[0].attention.rope.theta == 10_000.0 and blocks[0].attention.rope.scaling == "none"
  assert blocks[5].attention.rope.theta == 1e6 and blocks[5].attention.rope.scaling == "linear"
  smol = decoder_config(family_config("smollm3", "3b").model).blocks
  assert [b.attention.rope is None for b in smol[:8]] == [False, False, False, True] * 2
