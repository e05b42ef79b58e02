"""Attention over a per-query top-k set of key positions: `ops.sparse_attention`."""
