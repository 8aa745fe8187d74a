"""PaiNN — placeholder module; the implementation lands with the PaiNN work."""
