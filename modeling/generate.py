"""Autoregressive generation with per-layer caches.

`prefill` runs a batch of prompts (right-padded, each from position 0) through the
decoder as in training and returns each row's next-token logits and every
attention layer's cache (modeling/attention/cache.py); `decode` runs one new
token per row against those caches. Both are jitted on their shapes: the cache
length comes from `bucket`, so a decode step compiles once per (batch, bucket),
not per token. `generate` is the loop: sample, stop rows at EOS, call back with
each new token (for streaming).
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from modeling.decoder import Decoder, project


@dataclasses.dataclass(frozen=True)
class Sampling:
  greedy: bool = False
  temperature: float = 1.0
  top_k: int = 0  # 0: every token
  top_p: float = 1.0  # nucleus: the smallest set of tokens with this much probability


def check(s: Sampling):
  """One sentence per bad sampling setting."""
  if not 0.0 < s.top_p <= 1.0:
    raise ValueError(f"top_p={s.top_p} is outside (0, 1]; 1 keeps every token")
  if s.top_k < 0:
    raise ValueError(f"top_k={s.top_k} is negative; 0 keeps every token")
  if not s.greedy and s.temperature <= 0:
    raise ValueError(f"temperature={s.temperature} must be > 0; use greedy decoding for argmax")


def sample(logits, key, s: Sampling):
  """logits [b, vocab] float32 -> next tokens [b] int32."""
  if s.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / s.temperature
  if s.top_k > 0:
    kth = jax.lax.top_k(logits, min(s.top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if s.top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above
    drop = (
      jnp.zeros_like(logits, bool)
      .at[jnp.arange(logits.shape[0])[:, None], order]
      .set(before >= s.top_p)
    )
    logits = jnp.where(drop, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def bucket(n: int, smallest: int = 16) -> int:
  """n rounded up to a power of two (at least `smallest`): prompt and cache lengths
  come in few sizes, so few compiles."""
  return max(smallest, 1 << (max(n, 1) - 1).bit_length())


def _caches(aux) -> dict:
  return {path: st["cache"] for path, st in aux["layers"].items() if "cache" in st}


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len"))
def _prefill(graphdef, state, tokens, lengths, cache_len: int):
  model = nnx.merge(graphdef, state)
  b, p = tokens.shape
  segment_ids = (jnp.arange(p)[None] < lengths[:, None]).astype(jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(p), (b, p))
  hidden, aux = model(
    tokens, positions=positions, segment_ids=segment_ids, mtp=False, logits=False,
    cache_len=cache_len,
  )  # fmt: skip
  last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
  return project(model.cfg, last, model.head()), _caches(aux)


def _decode_logits(graphdef, state, caches, tokens, positions):
  model = nnx.merge(graphdef, state)
  tokens, positions = tokens[:, None], positions[:, None]
  hidden, aux = model(
    tokens, positions=positions, segment_ids=jnp.ones_like(tokens), mtp=False,
    logits=False, cache=caches,
  )  # fmt: skip
  return project(model.cfg, hidden[:, 0], model.head()), _caches(aux)


_decode = jax.jit(_decode_logits, static_argnames="graphdef", donate_argnames="caches")


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"), donate_argnames="caches")
def _decode_and_sample(graphdef, state, caches, tokens, positions, key, sampling: Sampling):
  """One decode step and the next tokens it samples (one dispatch per token)."""
  logits, caches = _decode_logits(graphdef, state, caches, tokens, positions)
  return sample(logits, jax.random.fold_in(key, positions[0]), sampling), caches


def prefill(model: Decoder, tokens, lengths, *, cache_len: int):
  """tokens [b, P] (row r's prompt in its first lengths[r] places) -> (the logits
  after each prompt [b, vocab] float32, caches for cache_len positions)."""
  graphdef, state = nnx.split(model)
  return _prefill(graphdef, state, tokens, lengths, cache_len)


def decode(model: Decoder, caches: dict, tokens, positions):
  """One new token per row: tokens, positions [b] -> (logits [b, vocab], caches);
  the caches passed in are donated (reuse the returned ones)."""
  graphdef, state = nnx.split(model)
  return _decode(graphdef, state, caches, tokens, positions)


_sample = jax.jit(sample, static_argnums=2)


def generate(
  model: Decoder,
  prompts: list[list[int]],
  max_new_tokens: int,
  sampling: Sampling = Sampling(greedy=True),
  *,
  seed: int = 0,
  eos_id: int | None = None,
  on_token: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
  """The new tokens of each prompt: up to max_new_tokens, ending at (and with)
  eos_id. on_token(row, token) sees each one as it is chosen."""
  check(sampling)
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  lengths = np.array([len(p) for p in prompts], np.int32)
  width = bucket(int(lengths.max()))
  tokens = np.zeros((len(prompts), width), np.int32)
  for r, p in enumerate(prompts):
    tokens[r, : len(p)] = p
  cache_len = bucket(int(lengths.max()) + max_new_tokens)
  graphdef, state = nnx.split(model)
  logits, caches = _prefill(
    graphdef, state, jnp.asarray(tokens), jnp.asarray(lengths), cache_len=cache_len
  )
  key = jax.random.key(seed)
  new = np.asarray(_sample(logits, key, sampling))
  positions, done = lengths.copy(), np.zeros(len(prompts), bool)
  out = [[] for _ in prompts]
  for i in range(max_new_tokens):
    for r in np.flatnonzero(~done):
      out[r].append(int(new[r]))
      if on_token is not None:
        on_token(int(r), int(new[r]))
    done |= new == eos_id if eos_id is not None else False
    if done.all() or i == max_new_tokens - 1:
      break
    new, caches = _decode_and_sample(
      graphdef, state, caches, jnp.asarray(new), jnp.asarray(positions), key, sampling
    )
    new = np.asarray(new)
    positions += 1
  return out
