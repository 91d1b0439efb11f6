"""Applications of the library: the demo, benchmarks and ablations.

They may import anything in jisp; nothing in jisp imports them (except the `jisp` command,
which runs them).
"""
