"""Imports run one way: core <- isp <- {models, diffusion, losses} <- data <- tasks <-
{train, infer} <- {experiments, cli}; no private access across modules; nothing outside
jisp.data imports TensorFlow or rawpy at import time.

Two checks: every import statement in the package (module level and inside functions)
against the table of allowed edges, and a real import of every module of each layer with
the layers it may not use made unimportable.
"""
import ast
import json
import pathlib
import subprocess
import sys

import pytest

from helpers import REPO, env

PKG = REPO / "jisp"

# layer -> the jisp layers its modules may import (besides itself).
ALLOWED = {
    "core": set(),
    "configs": {"core"},
    "isp": {"core"},
    "models": {"core", "isp"},
    "diffusion": {"core"},
    "losses": {"core"},
    "data": {"core", "isp"},
    "tasks": {"core", "isp", "models", "diffusion", "losses"},
    "train": {"core", "isp", "models", "diffusion", "losses", "tasks", "data"},
    "infer": {"core", "isp", "models", "diffusion", "losses", "tasks", "train", "data"},
    "experiments": {"core", "isp", "models", "diffusion", "losses", "tasks", "train", "data",
                    "infer", "configs"},
    "cli": {"core", "isp", "models", "diffusion", "losses", "tasks", "train", "data", "infer",
            "experiments", "configs"},
    "": {"cli"},  # jisp/__init__.py, jisp/__main__.py
}
# Edges allowed only inside functions, so importing the module never pulls TF/rawpy in.
LAZY_ONLY = {("train", "data"), ("infer", "data")}
HEAVY = ("tensorflow", "tensorflow_datasets", "rawpy")


def _modules():
  for path in sorted(PKG.rglob("*.py")):
    rel = path.relative_to(PKG).with_suffix("")
    parts = rel.parts
    name = ".".join(("jisp",) + tuple(p for p in parts if p != "__init__"))
    layer = parts[0] if len(parts) > 1 else ""
    yield path, name, layer


def _layer_of(module: str) -> str | None:
  parts = module.split(".")
  if parts[0] != "jisp":
    return None
  if len(parts) == 1:
    return ""
  return parts[1] if (PKG / parts[1]).is_dir() else ""


def _imports(tree):
  """(module imported, names, at_module_level) of every import in the tree."""
  def walk(node, top):
    for child in ast.iter_child_nodes(node):
      inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      if isinstance(child, ast.Import):
        for a in child.names:
          yield a.name, [], top
      elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
        yield child.module, [a.name for a in child.names], top
      yield from walk(child, inner)
  yield from walk(tree, True)


def test_every_import_follows_the_layer_table():
  bad = []
  for path, name, layer in _modules():
    tree = ast.parse(path.read_text())
    for mod, names, top in _imports(tree):
      root = mod.split(".")[0]
      if root in HEAVY and layer != "data" and top:
        bad.append(f"{name}: imports {mod} at module level (only jisp.data may)")
      target = _layer_of(mod)
      if target is None:
        continue
      if mod == "jisp" and names:  # `from jisp import tasks` names a layer
        targets = [_layer_of(f"jisp.{n}") for n in names]
      else:
        targets = [target]
      for t in targets:
        if t in ("", layer) and not (layer == "" and t == ""):
          continue
        if t not in ALLOWED[layer]:
          bad.append(f"{name}: imports {mod} ({layer or 'jisp'} may not use {t or 'jisp'})")
        elif (layer, t) in LAZY_ONLY and top:
          bad.append(f"{name}: imports {mod} at module level (only inside functions)")
      for n in names:
        if n.startswith("_") and not n.startswith("__"):
          bad.append(f"{name}: imports private {mod}.{n}")
  assert not bad, "\n".join(bad)


def test_no_private_attribute_access_across_modules():
  bad = []
  for path, name, _ in _modules():
    tree = ast.parse(path.read_text())
    aliases = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        aliases |= {(a.asname or a.name).split(".")[0] for a in node.names
                    if a.name.startswith("jisp")}
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jisp"):
        aliases |= {a.asname or a.name for a in node.names}
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
          and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
          and node.value.id in aliases):
        bad.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr}")
  assert not bad, "\n".join(bad)


_IMPORT_LAYER = r"""
import importlib, json, pkgutil, sys
layer, allowed, heavy = sys.argv[1], set(json.loads(sys.argv[2])), tuple(json.loads(sys.argv[3]))
class Block:
  def find_spec(self, name, path=None, target=None):
    parts = name.split(".")
    if parts[0] in heavy or (parts[0] == "jisp" and len(parts) > 1 and parts[1] != layer
                             and parts[1] in BLOCKED):
      raise ImportError(f"blocked for this check: {name}")
    return None
import jisp
BLOCKED = {m.name for m in pkgutil.iter_modules(jisp.__path__)} - allowed - {layer}
sys.meta_path.insert(0, Block())
pkg = importlib.import_module(f"jisp.{layer}")
names = [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for n in names:
  importlib.import_module(n)
print(json.dumps(names))
"""


@pytest.mark.parametrize("layer", ["core", "configs", "isp", "models", "diffusion", "tasks",
                                   "train", "infer", "experiments"])
def test_each_layer_imports_with_the_layers_above_it_blocked(layer):
  if not (PKG / layer).is_dir():
    pytest.skip(f"no jisp.{layer}")
  allowed = sorted(ALLOWED[layer] - {"data"})  # data is TF's layer: never needed at import
  p = subprocess.run([sys.executable, "-c", _IMPORT_LAYER, layer, json.dumps(allowed),
                      json.dumps(HEAVY)], env=env(1), cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  assert len(json.loads(p.stdout.strip().splitlines()[-1])) >= 1
