"""torch.profiler's view of the PyTorch peer's train step, grouped like `jisp bench profile`.

Run with the peer's Python, from the repository root:
  .peer/bin/python tools/torch_profile.py --peer-dir ../shared/bench [--batch 32] [--steps 2]
Prints one JSON line: self CPU milliseconds per step by group (forward and backward
convolutions, GroupNorm, fused attention, dense matmuls, swish, softmax, the optimiser, the
rest) and the heaviest aten ops. Self times, so nothing is counted twice.
"""
import argparse
import collections
import json
import sys

GROUPS = [  # (group, substrings of the aten op name), first match wins
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("convolution", "conv2d")),
    ("group norm backward", ("native_group_norm_backward",)),
    ("group norm forward", ("group_norm",)),
    ("attention (fused, flash)", ("scaled_dot_product",)),
    ("matmul (attention, dense)", ("bmm", "addmm", "aten::mm", "matmul", "baddbmm", "linear")),
    ("swish", ("silu",)),
    ("softmax", ("softmax",)),
    ("optimiser and clip", ("_foreach", "adam", "norm", "clip")),
]


def group(name: str) -> str:
  low = name.lower()
  for g, keys in GROUPS:
    if any(k in low for k in keys):
      return g
  return "other (elementwise, copies, loss)"


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--peer-dir", required=True)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--steps", type=int, default=2)
  a = p.parse_args()
  sys.path.insert(0, a.peer_dir)
  import torch
  from peer_torch import build_model
  torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  model = build_model(64).train().to(memory_format=torch.channels_last)
  opt = torch.optim.Adam(model.parameters(), lr=2e-4)
  b = a.batch
  raw, rgb = torch.rand(b, 3, 64, 64) * 2 - 1, torch.rand(b, 3, 64, 64) * 2 - 1

  def step():
    t = torch.randint(0, 1000, (b,))
    eps = torch.randn(b, 3, 64, 64)
    inp = torch.cat([0.7 * raw + 0.7 * eps, rgb], 1).contiguous(memory_format=torch.channels_last)
    loss = torch.nn.functional.mse_loss(model(inp, t).sample, eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  step()  # warm-up
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(a.steps):
      step()
  per_group = collections.Counter()
  per_op = collections.Counter()
  for ev in prof.key_averages():
    ms = ev.self_cpu_time_total / 1e3 / a.steps
    per_group[group(ev.key)] += ms
    per_op[ev.key] += ms
  total = sum(per_group.values())
  print(json.dumps({
      "bench": "torch_profile", "batch": b, "threads": a.threads, "self_ms_per_step": round(total, 1),
      "groups": {k: [round(v, 1), round(100 * v / total, 1)] for k, v in per_group.most_common()},
      "top": [[k, round(v, 1)] for k, v in per_op.most_common(12)]}))


if __name__ == "__main__":
  main()
