"""Where the time of a train step (or one network evaluation) goes, op by op.

    jisp bench profile --config configs/ddpm_fivek.py [--what train|network] [--steps 3]

The compiled step is traced with jax.profiler (a Perfetto trace, no extra packages): on
XLA:CPU every executed thunk (a fusion, a convolution, a copy) is one trace event named
after its HLO instruction. Each instruction of the optimised HLO module is put in a
category from what it computes (the called computation's opcodes) and, from the JAX
source path XLA keeps in its metadata, in which part of the step it sits: the forward
network, its backward pass (`transpose(jvp(...))`), or the optimiser / EMA update. The
result is one JSON line per category with milliseconds per step and share of the step,
and the heaviest instructions, so a slow layout copy or an unfused norm shows by name.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import numpy as np

# Opcode families, tested in this order on the instruction and its fused computation.
CATEGORIES = (
    ("convolution", ("convolution",)),
    ("matmul (attention, dense)", ("dot",)),
    ("layout transpose/copy", ("transpose", "copy")),
    ("reduction (norms, loss, grad norm)", ("reduce", "reduce-window")),
    ("elementwise", ()),
)

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*([^=]*?)\s([a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OPNAME = re.compile(r'op_name="([^"]*)"')
_WINDOW = re.compile(r"window=\{size=(\d+)x(\d+)")


def parse_hlo(text: str) -> dict[str, dict]:
  """{instruction name: {"opcode", "ops" (opcodes it runs, fused ones included), "op_name"}}
  of an optimised HLO module's text."""
  comps: dict[str, list] = {}
  shapes: dict[str, str] = {}
  current = None
  for line in text.splitlines():
    s = line.strip()
    if s.endswith("{") and not _INSTR.match(line):
      current = s.split()[1] if s.startswith("ENTRY") else s.split()[0]
      current = current.lstrip("%").split("(")[0]
      comps[current] = []
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      calls = _CALLS.search(line)
      op = _OPNAME.search(line)
      win = _WINDOW.search(line) if m.group(3) == "convolution" else None
      comps[current].append((m.group(1), m.group(3), op.group(1) if op else "",
                             calls.group(1) if calls else None,
                             max(int(win.group(1)), int(win.group(2))) if win else 0))
      shapes[m.group(1)] = m.group(2).split("{")[0].strip()

  def ops_of(comp, seen=()):
    out, window = set(), 0
    for _, opcode, _, calls, win in comps.get(comp, ()):
      out.add(opcode)
      window = max(window, win)
      if calls and calls not in seen:
        o, w = ops_of(calls, seen + (comp,))
        out |= o
        window = max(window, w)
    return out, window

  table = {}
  for comp, instrs in comps.items():
    for name, opcode, op_name, calls, win in instrs:
      inner, window = ops_of(calls) if calls else (set(), 0)
      if not op_name and calls:  # a fusion's metadata sits on its fused instructions
        op_name = next((i[2] for i in comps.get(calls, ()) if i[2]), "")
      table[name] = {"opcode": opcode, "ops": {opcode} | inner, "op_name": op_name,
                     "window": max(win, window), "shape": shapes.get(name, "")}
  return table


def category(info: dict) -> str:
  ops = info["ops"] - {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
  for name, keys in CATEGORIES:
    if not keys or any(k in ops for k in keys):
      if name == "layout transpose/copy" and ops - {"transpose", "copy", "fusion"}:
        continue  # a fusion that also computes is not a pure layout change
      return name
  return "elementwise"


def part(info: dict) -> str:
  """forward / backward / update of the step, from the JAX source path of the op."""
  n = info["op_name"]
  if info.get("window", 0) > 7 and "convolution" in info["ops"]:
    # A kernel gradient: XLA writes it as a convolution whose window is the whole feature
    # map (and often drops its metadata).
    return "backward (kernel gradients)"
  if "transpose(jvp" in n:
    return "backward"
  if "jvp(" in n or "apply" in n or "UNet" in n or "Block" in n:
    return "forward"
  return "update, loss and other"


def _trace_events(fn, args, steps: int) -> list[dict]:
  folder = tempfile.mkdtemp(prefix="jisp-profile-")
  jax.profiler.start_trace(folder, create_perfetto_trace=True)
  try:
    for _ in range(steps):
      args = fn(*args)
    jax.block_until_ready(args)
  finally:
    jax.profiler.stop_trace()
  files = sorted(glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True))
  if not files:
    raise RuntimeError(f"jax.profiler wrote no Perfetto trace under {folder}")
  with gzip.open(files[-1]) as f:
    d = json.load(f)
  return d["traceEvents"] if isinstance(d, dict) else d


def breakdown(compiled, step_fn, args, steps: int = 3) -> dict:
  """Per-category and per-instruction milliseconds per call of `compiled` (its HLO text
  names the instructions); `step_fn(*args) -> args` runs one call and returns the next
  call's arguments."""
  table = parse_hlo(compiled.as_text())
  t0 = time.perf_counter()
  events = _trace_events(step_fn, args, steps)
  wall = (time.perf_counter() - t0) / steps
  per_instr = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in table:
      per_instr[e["name"]] += float(e.get("dur", 0.0)) / 1e3 / steps  # us -> ms per call
  cats = collections.Counter()
  parts = collections.Counter()
  for name, ms in per_instr.items():
    cats[category(table[name])] += ms
    parts[part(table[name])] += ms
  total = sum(per_instr.values())
  top = [{"instruction": n, "ms": round(ms, 2), "shape": table[n]["shape"],
          "category": category(table[n]),
          "part": part(table[n]), "source": table[n]["op_name"][-120:]}
         for n, ms in per_instr.most_common(12)]
  # XLA's own (Eigen) convolutions run asynchronously on the intra-op thread pool: their
  # trace events last only as long as the launch, and the work shows as the executor's
  # wait, which no instruction owns. Say how many there are, so a small "convolution"
  # share is not read as cheap convolutions (jisp bench convs times them alone).
  asynchronous = sum(1 for n in per_instr if table[n]["opcode"] == "convolution")
  return {"wall_ms": round(1e3 * wall, 1), "ops_ms": round(total, 1),
          "categories": {k: round(v, 2) for k, v in cats.most_common()},
          "parts": {k: round(v, 2) for k, v in parts.most_common()}, "top": top,
          "async_convolutions": asynchronous}


def profile_train(config, steps: int = 3) -> dict:
  from jisp.core import sharding
  from jisp.train import guard, loop, optim, runs
  task = runs.build_task(config)
  tx, lr_fn = optim.make_optimizer(config.optim, config.num_steps)
  mesh = sharding.make_mesh()
  state, state_sh = loop.init_state(task, tx, config, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.to_global({k: rng.random(s.shape, np.float32)
                              for k, s in task.batch_spec(config.batch_size).items()}, mesh)
  g = jax.device_put(guard.init(), sharding.replicated(mesh))
  compiled = loop.compile_train_step(task, tx, lr_fn, config, mesh, state_sh).lower(
      state, batch, g).compile()
  state, _, g = compiled(state, batch, g)  # warm-up

  def step(state, g):
    state, _, g = compiled(state, batch, g)
    return state, g
  out = breakdown(compiled, step, (state, g), steps)
  out.update(what="train", task=task.name, batch=config.batch_size,
             devices=mesh.devices.size)
  return out


def profile_network(config, batch: int = 16, steps: int = 3) -> dict:
  """One network evaluation on `batch` patches (what a sampler step costs)."""
  from jisp.train import runs
  task = runs.build_task(config)
  params = task.init_params(jax.random.PRNGKey(0))
  fn, args = task.network(params)
  rng = np.random.default_rng(0)
  concrete = [args[0]] + [np.asarray(rng.random((batch,) + a.shape[1:]), a.dtype)
                          for a in args[1:]]
  compiled = jax.jit(fn).lower(*concrete).compile()
  jax.block_until_ready(compiled(*concrete))

  def call(*a):
    jax.block_until_ready(compiled(*a))
    return a
  out = breakdown(compiled, call, tuple(concrete), steps)
  out.update(what="network", task=task.name, batch=batch, devices=1)
  return out
