"""Training objectives that are math only (jnp over arrays; no models, no data)."""
