"""Every convolution of a task's network, timed alone on each XLA:CPU library.

    jisp bench convs --config configs/ddpm_fivek.py [--batch 4] [--json]

The network's convolutions are read off the jaxpr of one evaluation at `batch` examples
(the train step's micro-batch is what a convolution sees in training). Each distinct one
(input shape, kernel shape, strides, padding) is compiled and timed alone, forward, input
gradient and kernel gradient, once per library `cpu_conv` can choose (jisp.core.cpu_conv:
XLA's own kernels or YNNPACK), and the kernel gradient also as jisp's matmuls
(jisp.models.conv). One JSON line per convolution with milliseconds per call and GFLOP/s
of each, then one line per library with the network's totals (each convolution times the
number of times it occurs). This is what chose `cpu_conv=auto` and `model.conv_kernel_grad`
(README "Speed"), so a user can check the choice on their own CPU.
"""
from __future__ import annotations

import collections
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jisp.core import cpu_conv
from jisp.experiments import machine
from jisp.models import conv as conv_lib

LIBRARIES = ("xla", "ynnpack")
PARTS = ("fwd", "dx", "dk", "dk_matmul")


def _walk(jaxpr, found: collections.Counter) -> None:
  for eqn in jaxpr.eqns:
    for v in eqn.params.values():
      for sub in v if isinstance(v, (list, tuple)) else (v,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _walk(inner, found)
    if eqn.primitive.name == "conv_general_dilated":
      p = eqn.params
      lhs, rhs = (a.aval for a in eqn.invars[:2])
      if (p["feature_group_count"] != 1 or p["batch_group_count"] != 1
          or any(d != 1 for d in tuple(p["lhs_dilation"]) + tuple(p["rhs_dilation"]))):
        continue  # grouped or dilated: not what the libraries are compared on
      spec = lax.conv_dimension_numbers(lhs.shape, rhs.shape, p["dimension_numbers"])
      if spec != lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")):
        continue
      found[(tuple(lhs.shape), tuple(rhs.shape), tuple(p["window_strides"]),
             tuple(tuple(int(x) for x in pad) for pad in p["padding"]), str(lhs.dtype))] += 1


def network_convs(task, batch: int) -> collections.Counter:
  """{(x shape, kernel shape, strides, padding, dtype): occurrences} of one evaluation of
  the task's network on `batch` examples."""
  params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  fn, args = task.network(params)
  shaped = [params] + [jax.ShapeDtypeStruct((batch,) + tuple(a.shape[1:]), a.dtype)
                       for a in args[1:]]
  found = collections.Counter()
  _walk(jax.make_jaxpr(fn)(*shaped).jaxpr, found)
  return found


def _conv(strides, pads):
  return lambda x, w: lax.conv_general_dilated(
      x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _gflop(x_shape, w_shape, strides, pads) -> float:
  """Forward GFLOP of one convolution: 2 per multiply-add of every output element."""
  y = jax.eval_shape(_conv(strides, pads), jax.ShapeDtypeStruct(x_shape, jnp.float32),
                     jax.ShapeDtypeStruct(w_shape, jnp.float32))
  return 2 * np.prod(y.shape) * np.prod(w_shape[:3]) / 1e9


def _time(compiled, args, repeats: int, calls: int) -> float:
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = compiled(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / calls)
  return float(np.median(times))


def time_conv(x_shape, w_shape, strides, pads, dtype="float32", repeats: int = 5,
              calls: int = 3, seed: int = 0) -> dict:
  """{library: {part: ms}} of one convolution: forward, input gradient and kernel gradient
  by XLA's autodiff, and the kernel gradient as jisp's matmuls."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(x_shape), dtype)
  w = jnp.asarray(0.05 * rng.standard_normal(w_shape), dtype)
  conv = _conv(strides, pads)
  y = jax.eval_shape(conv, x, w)
  g = jnp.asarray(rng.standard_normal(y.shape), dtype)
  fns = {
      "fwd": (conv, (x, w)),
      "dx": (lambda x, w, g: jax.vjp(lambda a: conv(a, w), x)[1](g)[0], (x, w, g)),
      "dk": (lambda x, w, g: jax.vjp(lambda b: conv(x, b), w)[1](g)[0], (x, w, g)),
      "dk_matmul": (lambda x, g: conv_lib.conv_kernel_grad(x, g, w_shape[:2], strides, pads),
                    (x, g)),
  }
  out = {}
  for lib in LIBRARIES:
    opts = cpu_conv.compiler_options({"cpu_conv": lib}, "train")
    out[lib] = {part: 1e3 * _time(jax.jit(f, compiler_options=opts).lower(*a).compile(), a,
                                  repeats, calls)
                for part, (f, a) in fns.items()}
  return out


def bench_convs(task, batch: int = 4, emit=None, repeats: int = 5) -> list[dict]:
  if jax.default_backend() != "cpu":
    raise RuntimeError("jisp bench convs compares XLA:CPU's convolution libraries: it runs "
                       "on the CPU backend only")
  records, totals = [], {lib: dict.fromkeys(PARTS, 0.0) for lib in LIBRARIES}
  cpu = machine.cpu_info()
  gflop_total = 0.0
  for (xs, ws, st, pads, dtype), n in sorted(network_convs(task, batch).items(),
                                             key=lambda kv: (-kv[0][0][1], kv[0][1])):
    ms = time_conv(xs, ws, st, pads, dtype, repeats=repeats)
    gflop = float(_gflop(xs, ws, st, pads))
    gflop_total += n * gflop
    rec = {"bench": "convs", "x": list(xs), "kernel": list(ws), "strides": list(st),
           "pads": [list(p) for p in pads], "count": n, "gflop": round(gflop, 4),
           **{f"{lib}_{part}_ms": round(v, 3) for lib, parts in ms.items()
              for part, v in parts.items()},
           **{f"{lib}_{part}_gflops": round(gflop / v * 1e3, 1) for lib, parts in ms.items()
              for part, v in parts.items()}, **cpu}
    for lib, parts in ms.items():
      for part, v in parts.items():
        totals[lib][part] += n * v
    records.append(rec)
    if emit:
      emit(rec)
  n_convs = int(sum(r["count"] for r in records))
  for lib in LIBRARIES:
    t = totals[lib]
    rec = {"bench": "convs_total", "library": lib, "batch": batch,
           "convolutions": n_convs,
           "gflop_forward": round(gflop_total, 2),
           **{f"{part}_ms": round(v, 1) for part, v in t.items()},
           "train_ms": round(t["fwd"] + t["dx"] + min(t["dk"], t["dk_matmul"]), 1),
           "kernel_grad": "matmul" if t["dk_matmul"] < t["dk"] else "xla", **cpu}
    records.append(rec)
    if emit:
      emit(rec)
  return records


def human(rec: dict) -> str:
  if rec["bench"] == "convs_total":
    return (f"{rec['library']:8s} all {rec['convolutions']} convolutions at batch "
            f"{rec['batch']}: forward {rec['fwd_ms']} ms, input gradients {rec['dx_ms']} ms, "
            f"kernel gradients {rec['dk_ms']} ms (as matmuls {rec['dk_matmul_ms']} ms); "
            f"train {rec['train_ms']} ms with {rec['kernel_grad']} kernel gradients")
  parts = "  ".join(
      f"{lib}: " + "/".join(f"{rec[f'{lib}_{p}_gflops']:.0f}" for p in PARTS)
      for lib in LIBRARIES)
  return (f"x{rec['count']} {tuple(rec['x'])} * {tuple(rec['kernel'])} s{rec['strides'][0]}: "
          f"GFLOP/s fwd/dx/dk/dk_matmul  {parts}")
