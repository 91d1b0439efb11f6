"""Reliability of `jisp train` and of the checkpoint restore every command uses (issue 15):
corrupted checkpoints are skipped for the newest intact one, a resume with a changed
config is refused before anything is overwritten, a diverged run never checkpoints
exploded weights, and the NaN guard does not read the device on every step.

All in-process (helpers.cli) on the micro U-Net; one 6-step run is shared."""
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from helpers import MICRO, cli, losses, raw_lines

CFG = "configs/ddpm_tiny.py"


def _train(wd, *extra, steps=6):
  return cli("train", "--config", CFG, "--workdir", wd, *MICRO, f"--config.num_steps={steps}",
             "--config.log_every=1", "--config.checkpoint_every=2", *extra)


def _error_lines(err: str, cmd: str = "train"):
  return [l for l in err.splitlines() if l.startswith(f"jisp {cmd}: error:")]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  """6 steps, checkpoints 2, 4, 6 (keep 3)."""
  wd = tmp_path_factory.mktemp("base") / "run"
  assert _train(wd) == 0
  assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir()) == [2, 4, 6]
  assert (wd / "status").read_text() == "finished\n"  # what launch/slurm.sbatch reads
  return wd


def _copy(base_run, tmp_path, name="run"):
  dst = tmp_path / name
  shutil.copytree(base_run, dst)
  (dst / "train.lock").unlink(missing_ok=True)
  return dst


# ------------------------------------------------------------------ corrupted checkpoints

def _data_files(ck):
  return sorted((p for p in (ck / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
                key=lambda p: p.stat().st_size)


def corrupt(ck: pathlib.Path, kind: str) -> None:
  """The audit's damage to one checkpoint directory (reliability_audit.md rows 23-29)."""
  if kind == "truncate_data":
    f = _data_files(ck)[-1]
    f.write_bytes(f.read_bytes()[:1000])
  elif kind == "delete_data":
    _data_files(ck)[-1].unlink()
  elif kind == "flip_bytes":  # 2000 bytes spread over the file, so read regions are hit
    f = _data_files(ck)[-1]
    b = bytearray(f.read_bytes())
    for i in range(0, len(b), max(1, len(b) // 2000)):
      b[i] ^= 0xFF
    f.write_bytes(bytes(b))
  elif kind == "delete_metadata":
    (ck / "state" / "_METADATA").unlink()
  elif kind == "truncate_manifest":
    f = ck / "state" / "manifest.ocdbt"
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
  elif kind == "remove_state":
    shutil.rmtree(ck / "state")
  elif kind == "zero_all":
    for p in ck.rglob("*"):
      if p.is_file():
        p.write_bytes(b"\0" * p.stat().st_size)
  else:
    raise ValueError(kind)


KINDS = ["truncate_data", "delete_data", "flip_bytes", "delete_metadata", "truncate_manifest",
         "remove_state", "zero_all"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_newest_checkpoint_is_skipped_for_the_newest_intact_one(base_run, tmp_path,
                                                                        kind, capsys):
  from jisp.train import checkpoint, runs
  wd = _copy(base_run, tmp_path)
  corrupt(wd / "checkpoints" / "6", kind)
  capsys.readouterr()
  run = runs.load_run(str(wd))  # what eval and reconstruct call
  err = capsys.readouterr().err.strip().splitlines()
  assert run.step == 4
  assert len(err) == 1 and "skipped damaged checkpoint step 6" in err[0] and "using step 4" in err[0]
  # ... and it really is step 4's weights.
  _, want = checkpoint.restore_params(str(base_run), run.task, step=4)
  for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_values_changed_behind_orbax_are_caught_by_the_fingerprint(base_run, tmp_path,
                                                                   capsys):
  """Damage that still decodes (here: one weight rewritten through Orbax itself) is what
  only the content fingerprint stored with each checkpoint can see."""
  import functools
  import orbax.checkpoint as ocp
  from jisp.train import optim, runs, state as state_lib
  wd = _copy(base_run, tmp_path)
  task = runs.load_run(str(wd)).task
  tx, _ = optim.make_optimizer(task.config.optim, task.config.num_steps)
  shapes = jax.eval_shape(functools.partial(state_lib.create, task, tx), jax.random.PRNGKey(0))
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), shapes)
  state_dir = wd / "checkpoints" / "6" / "state"
  with ocp.StandardCheckpointer() as ck:
    state = ck.restore(state_dir, abstract)
  leaves, treedef = jax.tree.flatten(state.params)
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].add(1e-3)  # one weight, slightly
  state = state.replace(params=jax.tree.unflatten(treedef, leaves))
  shutil.rmtree(state_dir)
  with ocp.StandardCheckpointer() as ck:
    ck.save(state_dir, state)
  capsys.readouterr()
  run = runs.load_run(str(wd))
  err = capsys.readouterr().err
  assert run.step == 4 and "does not match its fingerprint" in err, err


def test_no_intact_checkpoint_is_one_line(base_run, tmp_path, capsys):
  wd = _copy(base_run, tmp_path)
  for step, kind in zip((2, 4, 6), ("zero_all", "truncate_data", "remove_state")):
    corrupt(wd / "checkpoints" / str(step), kind)
  capsys.readouterr()
  rc = cli("reconstruct", "--workdir", wd, tmp_path / "none.png", "-o", tmp_path / "out")
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1, err
  assert "no intact checkpoint" in err[0]
  for s in (2, 4, 6):
    assert f"step {s}:" in err[0]


def test_train_resumes_from_newest_intact_checkpoint_exactly(base_run, tmp_path, capsys):
  wd = _copy(base_run, tmp_path)
  corrupt(wd / "checkpoints" / "6", "truncate_data")
  (wd / "metrics.jsonl").unlink()  # only what the resumed run logs is compared
  capsys.readouterr()
  assert _train(wd) == 0
  out = capsys.readouterr()
  warn = [l for l in out.err.splitlines() if "skipped damaged checkpoint" in l]
  assert len(warn) == 1 and "step 6" in warn[0] and "resuming from step 4" in warn[0]
  assert "resumed from checkpoint step 4" in out.out
  assert (wd / "checkpoints.corrupt" / "6").is_dir()  # kept, out of Orbax's way
  ref, got = losses(base_run), losses(wd)
  assert sorted(got) == [5, 6]
  for s in (5, 6):
    assert got[s] == ref[s], (s, got[s], ref[s])


def test_config_json_missing_a_group_is_one_line(base_run, tmp_path, capsys):
  wd = _copy(base_run, tmp_path)
  cfg = json.loads((wd / "config.json").read_text())
  del cfg["model"]
  (wd / "config.json").write_text(json.dumps(cfg))
  capsys.readouterr()
  rc = cli("reconstruct", "--workdir", wd, tmp_path / "none.png", "-o", tmp_path / "out")
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1, err
  assert "config.json" in err[0] and "'model'" in err[0]


# ------------------------------------------------------------------ resume with a changed config

@pytest.mark.parametrize("override,key", [
    ("--config.model.base_channels=16", "model.base_channels"),
    ("--config.diffusion.prediction=eps", "diffusion.prediction"),
    ("--config.optim.name=adamw", "optim.name"),
])
def test_resume_with_a_changed_model_or_objective_is_refused_untouched(base_run, tmp_path,
                                                                       override, key, capsys):
  wd = _copy(base_run, tmp_path)
  # train.log is left out: in this one process it also collects the absl warnings of
  # earlier tests' background checkpoint threads.
  before = {p.relative_to(wd): p.read_bytes() for p in wd.rglob("*")
            if p.is_file() and "tensorboard" not in p.parts and p.name != "train.log"}
  capsys.readouterr()
  rc = _train(wd, override, steps=8)
  err = capsys.readouterr().err
  lines = _error_lines(err)
  assert rc == 2 and len(lines) == 1, err[-2000:]
  assert key in lines[0] and "cannot resume checkpoint step 6" in lines[0]
  assert "Traceback" not in err
  after = {p.relative_to(wd): p.read_bytes() for p in wd.rglob("*")
           if p.is_file() and "tensorboard" not in p.parts
           and p.name not in ("train.lock", "train.log")}
  before.pop(pathlib.Path("train.lock"), None)
  assert after == before  # config.json, checkpoints, metrics: byte for byte


# ------------------------------------------------------------------ divergence

def test_divergence_never_checkpoints_exploded_weights(tmp_path, capsys):
  """The audit's case: peak_lr 1e12 keeps the first updates finite but explodes the
  weights; the old loop saved them as 'last good'."""
  wd = tmp_path / "nan"
  rc = cli("train", "--config", CFG, "--workdir", wd, *MICRO, "--config.num_steps=10",
           "--config.log_every=1", "--config.checkpoint_every=1",
           "--config.optim.peak_lr=1e12", "--config.optim.warmup_steps=1")
  err = capsys.readouterr().err
  lines = _error_lines(err)
  assert rc == 3 and len(lines) == 1, err[-2000:]
  kept = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  from jisp.train import runs, sources
  if not kept:
    assert "no checkpoint had been written yet" in lines[0]
    return
  assert f"the newest checkpoint, step {kept[-1]}, is finite and kept" in lines[0]
  # The checkpoint it names really works: finite weights whose loss is finite.
  run = runs.load_run(str(wd))
  assert run.step == kept[-1]
  src = sources.make_source(run.config, "test", local_batch=8, process_index=0,
                            process_count=1, train=False)
  batch = src.next()
  loss, _ = jax.jit(lambda p, b: run.task.loss(p, b, jax.random.PRNGKey(0), train=False))(
      run.params, batch)
  assert np.isfinite(float(loss)), float(loss)


def test_a_short_diverged_run_does_not_exit_zero(tmp_path, capsys):
  rc = cli("train", "--config", CFG, "--workdir", tmp_path / "nan2", *MICRO,
           "--config.num_steps=2", "--config.log_every=1", "--config.checkpoint_every=1",
           "--config.optim.peak_lr=1e12", "--config.optim.warmup_steps=1")
  assert rc == 3, capsys.readouterr().err[-2000:]


def test_nan_guard_reads_the_device_only_on_log_eval_and_checkpoint_steps(tmp_path):
  """Under a transfer guard that forbids every device->host copy, the loop runs: the only
  reads are the ones through loop.to_host, one per host step."""
  from jisp.core.config import load
  from jisp.train import loop
  cfg = load(CFG, [*MICRO, "--config.num_steps=9", "--config.log_every=3",
                   "--config.checkpoint_every=9", "--config.eval_every=1000"])
  loop.HOST_READS["count"] = 0
  with jax.transfer_guard_device_to_host("disallow_explicit"):
    loop.train(cfg, str(tmp_path / "guarded"))
  # steps 3 and 6: guard + metrics; step 9: guard + metrics, pre-save check, final eval.
  assert loop.HOST_READS["count"] == 5
  assert sorted(int(r["step"]) for r in raw_lines(tmp_path / "guarded") if "loss" in r) == [3, 6, 9]


def test_late_write_callbacks_after_a_failed_save_are_dropped_and_nothing_else(tmp_path):
  """A failed async save leaves TensorStore writes that wake Orbax's closed loop from C
  (no Python caller: the traceback starts at call_soon_threadsafe, and it goes to
  sys.unraisablehook); the one-line error must not drown in those tracebacks, while any
  other unraisable error still reaches the hook that was there before."""
  import asyncio
  import sys
  from jisp.train import checkpoint

  class Raises:
    def __del__(self):
      raise ValueError("from a finaliser")

  saved, reached = sys.unraisablehook, []
  sys.unraisablehook = reached.append
  try:
    Raises()  # the hook's argument type is not exposed by name: catch one instance
    args_type = type(reached.pop())
    ck = checkpoint.Checkpointer(tmp_path / "run", keep=1, async_save=False)
    loop = asyncio.new_event_loop()
    loop.close()
    try:
      loop.call_soon_threadsafe(print)
    except RuntimeError as e:
      late = e
    for exc, tb in ((late, late.__traceback__.tb_next),  # as C reports it: dropped
                    (late, late.__traceback__),  # raised under Python code: kept
                    (RuntimeError("something else"), None)):  # kept
      sys.unraisablehook(args_type((type(exc), exc, tb, None, None)))
    Raises()  # kept

    async def _read_array_index_and_device_put():  # named as Orbax's shard read
      pass
    read = _read_array_index_and_device_put()
    read.close()
    for exc in (Exception("Encountered error while reading array index: (slice(0, 16, 1),)"),
                Exception("something else in a read")):  # dropped, kept
      sys.unraisablehook(args_type((type(exc), exc, None, None, read)))
    ck.close()
  finally:
    sys.unraisablehook = saved
  assert [(u.exc_value, u.exc_traceback is late.__traceback__) for u in reached[:2]] == [
      (late, True), (reached[1].exc_value, False)]
  assert str(reached[1].exc_value) == "something else"
  assert len(reached) == 4 and str(reached[2].exc_value) == "from a finaliser"
  assert str(reached[3].exc_value) == "something else in a read"


def test_a_save_on_cpu_devices_compiles_nothing_and_restores_the_same_values(tmp_path):
  """Orbax's replica-parallel default would slice each replicated array into one piece per
  device, one XLA compile per array shape, at every process's first save; on CPU each
  array is written whole by one replica instead. The files restore to the same values."""
  import orbax.checkpoint as ocp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from jisp.train import checkpoint

  assert jax.device_count() >= 2
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  rep = NamedSharding(mesh, P())
  # Leading sizes that split evenly over the devices (what replica-parallel slices).
  state = {f"w{i}": jax.device_put(
      np.arange(n * k, dtype=np.float32).reshape(n, k) + i, rep)
      for i, (n, k) in enumerate(((8, 3), (24, 5), (40, 7)))}
  compiles = []

  def listen(event, duration, **kw):
    if "compile" in event or "trace" in event:
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    ck = checkpoint.Checkpointer(tmp_path / "run", keep=1, async_save=True)
    ck.save(1, state, {"epoch": 0})
    ck.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert compiles == []
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), state)
  with ocp.StandardCheckpointer() as reader:
    back = reader.restore(tmp_path / "run" / "checkpoints" / "1" / "state", abstract)
  for k in state:
    np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(state[k]))
