"""jisp against the PyTorch + diffusers peer, side by side in one sitting.

    jisp bench vs-torch --peer-dir ../shared/bench --peer-python .peer/bin/python \
        [--what train,sample] [--rounds 2] [--batch 16]

The peer scripts (`peer_torch.py`, `peer_torch_train.py`: the paper U-Net in PyTorch with
diffusers' schedulers) are what a user would run instead of jisp. Speed on CPUs moves
with the machine, with other load and from minute to minute, so a ratio only means
something when both tools run on the same machine within minutes of each other: each
round runs jisp and then every peer variant, alternating, and the medians over rounds
are compared. Each measurement is a separate process (no warm caches carried over, the
same thread count for both: the peer gets `--threads` = this machine's cores).

One JSON line per measurement (`"tool": "jisp"|"torch"|"torch.compile"`, the round), then
one line per comparison with both medians and `ratio` = jisp / the faster peer variant,
with the CPU model and its instruction-set flags (jisp.experiments.machine.cpu_info).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from jisp.core.errors import OptionError
from jisp.experiments import machine

WHATS = ("train", "sample")


def _json_lines(cmd: list[str]) -> list[dict]:
  """The JSON lines a command prints (every tool here prints one per measurement)."""
  p = subprocess.run(cmd, capture_output=True, text=True)
  if p.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-400:]}")
  lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
  if not lines:
    raise RuntimeError(f"{' '.join(cmd)} printed no JSON line")
  return lines


def commands(what: str, *, peer_dir: str, peer_python: str, batch: int, steps: int,
             sampler: str, config: str) -> dict[str, list[str]]:
  """{tool: command} of one measurement of `what` (jisp first, then the peer variants)."""
  jisp = [sys.executable, "-m", "jisp", "bench"]
  threads = str(os.cpu_count() or 1)
  if what == "train":
    return {
        "jisp": jisp + ["train", "--config", config, f"--config.batch_size={batch}", "--json",
                        "--steps", "3"],
        "torch": [peer_python, os.path.join(peer_dir, "peer_torch_train.py"), "--batch",
                  str(batch), "--threads", threads, "--repeats", "3", "--warmup", "2"],
        "torch.compile": [peer_python, os.path.join(peer_dir, "peer_torch_train.py"),
                          "--batch", str(batch), "--threads", threads, "--repeats", "3",
                          "--warmup", "2", "--compile", "1"],
    }
  peer_sampler = {"ddim": "ddim", "dpm_solver": "dpm", "ddpm": "ddpm"}[sampler]
  return {
      "jisp": jisp + ["predict", "--config", config, "--sampler", sampler, "--steps",
                      str(steps), "--batch", str(batch), "--json"],
      "torch.compile": [peer_python, os.path.join(peer_dir, "peer_torch.py"), "--sampler",
                        peer_sampler, "--steps", str(steps), "--batch", str(batch),
                        "--threads", threads, "--compile", "1", "--repeats", "2"],
  }


def speed_of(what: str, tool: str, rec: dict) -> float:
  """patches/s of a train step, patch-NFE/s of sampling; from either tool's record."""
  del tool  # both tools name the figure alike
  return float(rec["patches_per_s" if what == "train" else "patch_nfe_per_s"])


def compare(whats, *, peer_dir: str, peer_python: str, rounds: int = 2, batch: int | None = None,
            steps: int = 20, sampler: str = "ddim", config: str = "configs/ddpm_fivek.py",
            emit=print) -> list[dict]:
  for w in whats:
    if w not in WHATS:
      raise OptionError(f"--what {w!r}: expected a comma-separated subset of {', '.join(WHATS)}")
  for name in ("peer_torch.py", "peer_torch_train.py"):
    if not os.path.isfile(os.path.join(peer_dir, name)):
      raise OptionError(f"--peer-dir {peer_dir}: no {name} there")
  if not os.path.isfile(peer_python):
    raise OptionError(f"--peer-python {peer_python}: no such interpreter (a Python with torch "
                      "and diffusers)")
  cpu = machine.cpu_info()
  speeds: dict = {}
  for r in range(rounds):
    for w in whats:
      b = batch or (32 if w == "train" else 16)
      for tool, cmd in commands(w, peer_dir=peer_dir, peer_python=peer_python, batch=b,
                                steps=steps, sampler=sampler, config=config).items():
        # bench train measures 1 device and all local devices: the best counts
        rec = max(_json_lines(cmd), key=lambda x: speed_of(w, tool, x))
        s = speed_of(w, tool, rec)
        speeds.setdefault((w, b), {}).setdefault(tool, []).append(s)
        # jisp's layout of its best figure: devices and (train) the micro-batch it ran
        layout = {k: rec[k] for k in ("devices", "micro_batch") if tool == "jisp" and k in rec}
        emit(json.dumps({"bench": "vs_torch", "what": w, "tool": tool, "round": r,
                         "batch": b, "speed": round(s, 3), **layout,
                         "unit": "patches/s" if w == "train" else "patch-NFE/s", **cpu}))
  out = []
  for (w, b), by_tool in speeds.items():
    med = {t: statistics.median(v) for t, v in by_tool.items()}
    peers = {t: v for t, v in med.items() if t != "jisp"}
    best = max(peers, key=peers.get)
    rec = {"bench": "vs_torch", "what": w, "batch": b, "rounds": rounds,
           "jisp": round(med["jisp"], 3), **{t: round(v, 3) for t, v in peers.items()},
           "faster_peer": best, "ratio": round(med["jisp"] / peers[best], 3),
           "unit": "patches/s" if w == "train" else "patch-NFE/s", **cpu}
    out.append(rec)
    emit(json.dumps(rec))
  return out
