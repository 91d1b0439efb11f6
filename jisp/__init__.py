"""jisp: learned inverse camera ISP (sRGB <-> RAW) in JAX/Flax."""
__version__ = "0.1.0"
