"""Autoregressive generation with per-layer caches.

`prefill` runs a batch of prompts (right-padded, each from position 0) through the
decoder as in training and returns each row's next-token logits and every
attention layer's cache (modeling/attention/cache.py); `decode` runs one new
token per row against those caches. Both are jitted on their shapes: the cache
length comes from `bucket`, so a decode step compiles once per (batch, bucket),
not per token. `generate` is the loop: decode and sample several tokens per
call in a device loop (one dispatch per burst, not per token; it stops early once
every row has reached EOS), then call back with each new token (for streaming).
"""

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from modeling.decoder import Decoder, project
from parallelism import rules


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


def _on(mesh):
  """Model code traced inside lays activations and caches out on `mesh` (if any)."""
  return rules.activate(mesh) if mesh is not None else contextlib.nullcontext()


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "mesh"))
def _prefill(graphdef, state, tokens, lengths, cache_len: int, mesh=None):
  with _on(mesh):
    return _prefill_logits(graphdef, state, tokens, lengths, cache_len)


def _prefill_logits(graphdef, state, tokens, lengths, cache_len: int):
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


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh"), donate_argnames="caches")
def _decode(graphdef, state, caches, tokens, positions, mesh=None):
  with _on(mesh):
    return _decode_logits(graphdef, state, caches, tokens, positions)


@functools.partial(
  jax.jit, static_argnames=("graphdef", "sampling", "steps", "mesh"), donate_argnames="caches"
)
def _decode_steps(
  graphdef, state, caches, tokens, positions, done, key, count, eos, *, sampling, steps, mesh
):
  """Up to `count` (<= steps) decode-and-sample steps in one device loop, stopping
  early once every row has sampled eos: tokens [b] at positions [b] are the last
  ones chosen; done [b] marks rows already finished. -> (the tokens chosen
  [b, steps], column i by step i; steps run; caches)."""

  def body(carry):
    i, tokens, caches, done, out = carry
    logits, caches = _decode_logits(graphdef, state, caches, tokens, positions + i)
    tokens = sample(logits, jax.random.fold_in(key, positions[0] + i), sampling)
    return i + 1, tokens, caches, done | (tokens == eos), out.at[:, i].set(tokens)

  out = jnp.zeros((tokens.shape[0], steps), jnp.int32)
  carry = (jnp.int32(0), tokens, caches, done, out)
  with _on(mesh):
    n, _, caches, _, out = jax.lax.while_loop(
      lambda c: (c[0] < count) & ~jnp.all(c[3]), body, carry
    )
  return out, n, caches


def prefill(model: Decoder, tokens, lengths, *, cache_len: int, mesh=None):
  """tokens [b, P] (row r's prompt in its first lengths[r] places) -> (the logits
  after each prompt [b, vocab] float32, caches for cache_len positions). On a mesh
  (the weights laid out there: trainer/inference.py `shard`) the caches shard by
  their logical axes (modeling/attention/cache.py AXES)."""
  graphdef, state = nnx.split(model)
  return _prefill(graphdef, state, tokens, lengths, cache_len, mesh)


def decode(model: Decoder, caches: dict, tokens, positions, *, mesh=None):
  """One new token per row: tokens, positions [b] -> (logits [b, vocab], caches);
  the caches passed in are donated (reuse the returned ones)."""
  graphdef, state = nnx.split(model)
  return _decode(graphdef, state, caches, tokens, positions, mesh)


_sample = jax.jit(sample, static_argnums=2)


def _check_length(longest: int, max_new_tokens: int, max_len: int):
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  if max_len and longest > max_len:
    raise ValueError(
      f"a prompt of {longest} tokens is longer than the model's maximum length "
      f"(model.max_len={max_len}); shorten it"
    )
  if max_len and longest + max_new_tokens > max_len:
    raise ValueError(
      f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} passes the "
      f"model's maximum length (model.max_len={max_len}); ask for at most "
      f"{max_len - longest} new tokens"
    )


def generate(
  model: Decoder,
  prompts: list[list[int]],
  max_new_tokens: int,
  sampling: Sampling = Sampling(greedy=True),
  *,
  seed: int = 0,
  eos_id: int | None = None,
  on_token: Callable[[int, int], None] | None = None,
  steps_per_call: int = 16,
  max_len: int = 0,
  mesh=None,
) -> list[list[int]]:
  """The new tokens of each prompt: up to max_new_tokens, ending at (and with)
  eos_id. The device decodes up to steps_per_call tokens per call (one compile
  per batch, cache bucket and sampling), then on_token(row, token) sees each of
  them in order (streaming comes in bursts of that many). max_len: the model's
  longest sequence (config.model.max_len; 0: no limit). mesh: run on it (the
  weights laid out there first: trainer/inference.py `shard`; the caches shard by
  their logical axes)."""
  check(sampling)
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  lengths = np.array([len(p) for p in prompts], np.int32)
  _check_length(int(lengths.max()), max_new_tokens, max_len)
  width = bucket(int(lengths.max()))
  tokens = np.zeros((len(prompts), width), np.int32)
  for r, p in enumerate(prompts):
    tokens[r, : len(p)] = p
  cache_len = bucket(int(lengths.max()) + max_new_tokens)
  graphdef, state = nnx.split(model)
  logits, caches = _prefill(
    graphdef, state, jnp.asarray(tokens), jnp.asarray(lengths), cache_len, mesh
  )
  key = jax.random.key(seed)
  new = np.asarray(_sample(logits, key, sampling))[:, None]  # [b, steps]
  positions, done = lengths.copy(), np.zeros(len(prompts), bool)
  eos = -1 if eos_id is None else eos_id
  out = [[] for _ in prompts]
  left = max_new_tokens
  while True:
    for column in new.T:  # each step's tokens, emitted in order
      for r in np.flatnonzero(~done):
        out[r].append(int(column[r]))
        if on_token is not None:
          on_token(int(r), int(column[r]))
      done |= column == eos
      left -= 1
    if done.all() or left == 0:
      return out
    chosen, n, caches = _decode_steps(
      graphdef, state, caches, jnp.asarray(new[:, -1]),
      jnp.asarray(positions), jnp.asarray(done), key, min(left, steps_per_call), eos,
      sampling=sampling, steps=steps_per_call, mesh=mesh,
    )  # fmt: skip
    n = int(n)
    new = np.asarray(chosen)[:, :n]
    positions += n
