"""What both HF parity suites share: tiny-model sizes, tolerance, weight
randomisation that leaves nothing at its 0/1 default, and token batches."""

import numpy as np
import torch

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
