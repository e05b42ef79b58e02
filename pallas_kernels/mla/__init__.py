"""MLA attention in latent space: `ops.mla_attention`."""
