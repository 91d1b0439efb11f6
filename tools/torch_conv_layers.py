"""The convolutions `jisp bench convs` timed, timed again in PyTorch (oneDNN), alone.

Run with the peer's Python, from the repository root, on the JSON lines of jisp's bench:
  .venv/bin/jisp bench convs --config configs/ddpm_fivek.py --json > convs.jsonl
  .peer/bin/python tools/torch_conv_layers.py convs.jsonl [--threads 2]
For each convolution: milliseconds of the forward pass, the input gradient and the kernel
gradient (channels-last, as the peer's train step runs them), one JSON line each with
jisp's train-step figures beside them (cpu_conv=auto: XLA's own kernels); then the totals
over the network (each convolution times its count). What PyTorch's kernels reach on the
same shapes on this CPU is the bar the train step's convolutions are measured against
(README "Speed").
"""
import argparse
import json
import statistics
import time


def _time(fn, repeats, calls):
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(calls):
      fn()
    times.append((time.perf_counter() - t0) / calls)
  return 1e3 * statistics.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("convs", help="JSON lines of `jisp bench convs --json`")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--repeats", type=int, default=5)
  a = p.parse_args()
  import torch
  torch.set_num_threads(a.threads)
  with open(a.convs) as f:
    recs = [json.loads(ln) for ln in f if ln.startswith("{")]
  convs = [r for r in recs if r.get("bench") == "convs"]
  if not convs:
    raise SystemExit(f"{a.convs}: no `jisp bench convs` lines")
  totals = {"fwd": 0.0, "dx": 0.0, "dk": 0.0}
  jisp_total = {"fwd": 0.0, "dx": 0.0, "dk": 0.0}
  for r in convs:
    n, h, w, c = r["x"]
    kh, kw, _, d = r["kernel"]
    (pt, pb), (pl, pr) = r["pads"]
    cl = torch.channels_last
    x = torch.randn(n, c, h, w).to(memory_format=cl)
    conv = torch.nn.Conv2d(c, d, (kh, kw), stride=tuple(r["strides"]), padding=0,
                           bias=False).to(memory_format=cl)
    # jisp's pads may be lopsided (strided SAME): pad explicitly, then a VALID convolution
    xp = torch.nn.functional.pad(x, (pl, pr, pt, pb)).contiguous(memory_format=cl)
    xg = xp.clone().requires_grad_(True)
    g = torch.randn_like(conv(xp)).contiguous(memory_format=cl)

    def fwd():
      with torch.no_grad():
        conv(xp)

    def fwd_dk():  # the kernel gradient only (input needs no gradient)
      conv.zero_grad(set_to_none=True)
      conv(xp).backward(g)

    def fwd_all():
      conv.zero_grad(set_to_none=True)
      conv(xg).backward(g)

    f = _time(fwd, a.repeats, 3)
    fk = _time(fwd_dk, a.repeats, 3)
    fa = _time(fwd_all, a.repeats, 3)
    ms = {"fwd": f, "dk": max(fk - f, 1e-6), "dx": max(fa - fk, 1e-6)}
    # jisp's train step by default (cpu_conv=auto): XLA's own kernels, XLA's kernel gradient
    best = {"fwd": r["xla_fwd_ms"], "dx": r["xla_dx_ms"], "dk": r["xla_dk_ms"]}
    for k in totals:
      totals[k] += r["count"] * ms[k]
      jisp_total[k] += r["count"] * best[k]
    print(json.dumps({"bench": "torch_convs", "x": r["x"], "kernel": r["kernel"],
                      "strides": r["strides"], "count": r["count"],
                      **{f"torch_{k}_ms": round(v, 3) for k, v in ms.items()},
                      **{f"jisp_{k}_ms": round(v, 3) for k, v in best.items()}}),
          flush=True)
  print(json.dumps({"bench": "torch_convs_total", "threads": a.threads,
                    **{f"torch_{k}_ms": round(v, 1) for k, v in totals.items()},
                    **{f"jisp_{k}_ms": round(v, 1) for k, v in jisp_total.items()}}),
        flush=True)


if __name__ == "__main__":
  main()
