"""What both HF parity suites share: tiny-model sizes, tolerance, weight
randomisation that leaves nothing at its 0/1 default, and token batches."""

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

TOL = 1e-4  # max abs logit difference, float32
VOCAB, SEQ = 128, 32
TINY = dict(
  vocab_size=VOCAB,
  hidden_size=64,
  intermediate_size=96,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=16,
  max_position_embeddings=256,
  pad_token_id=0,
  bos_token_id=1,
  eos_token_id=2,
)


def randomise(model: torch.nn.Module):
  """Matrices ~ N(0, 1/fan_in); vectors shifted by N(0, 0.2); correction biases ~ N(0, 0.1)."""
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.2 * torch.randn_like(p))
      else:
        p.normal_(0.0, p.shape[-1] ** -0.5)
    for name, buffer in model.named_buffers():
      if name.endswith("e_score_correction_bias"):
        buffer.normal_(0.0, 0.1)


def tokens(batch, seq, seed=0):
  return np.random.default_rng(seed).integers(0, VOCAB, (batch, seq))


# A parity case: (HF model class, HF config class, config kwargs over TINY).


def hf_config(case, eager: bool = True, **overrides):
  _, config_cls, kwargs = case
  extra = {"attn_implementation": "eager"} if eager else {}
  return config_cls(**{**TINY, **kwargs, **overrides}, **extra)


def build(case, directory, **overrides):
  """A float32 HF model of `case` with every weight randomised, saved to `directory`."""
  torch.manual_seed(0)
  model = case[0](hf_config(case, **overrides)).eval().float()
  randomise(model)
  model.save_pretrained(directory)
  return model


def config_dict(case, **overrides) -> dict:
  """The config.json dict HF would write for `case`."""
  return hf_config(case, eager=False, **overrides).to_dict()


@nnx.jit
def _forward(model, tokens, positions, segment_ids):
  return model(tokens, positions=positions, segment_ids=segment_ids)


def ours(model, tokens, positions=None, segment_ids=None):
  """Our (logits, aux) on numpy inputs; tests feed [2, SEQ] so each model compiles once."""
  if positions is None:
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  if segment_ids is None:
    segment_ids = np.ones(tokens.shape, np.int32)
  logits, aux = _forward(
    model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids, jnp.int32)
  )
  return np.asarray(logits), aux
