"""Blocked online-softmax attention (FlashAttention-2): `ops.flash_attention`."""
