"""Small shared pieces every layer may use: errors, atomic files, configs, sharding,
micro-batching, metrics, camera constants, image and DNG I/O.

Imports only jax, numpy and ml_collections at module level (Pillow and tifffile inside
the image functions that need them), and nothing else of jisp.
"""
