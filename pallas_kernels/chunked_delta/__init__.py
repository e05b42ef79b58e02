"""The chunked delta rule's state pass (gated DeltaNet, KDA): `ops.state_pass`."""
