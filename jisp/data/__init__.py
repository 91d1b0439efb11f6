"""Data I/O. The only package allowed to import rawpy, tensorflow and tfds.

Nothing is imported here eagerly so that `jisp.data.synthetic` (numpy only) stays
usable on machines without TensorFlow or rawpy.
"""
