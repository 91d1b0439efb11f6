"""The mesh and the parameter-sharding rule (fsdp): which arrays are split, along which
axis, and that a batch spans every device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jisp.core import sharding


def test_rule_picks_the_largest_divisible_axis_and_replicates_small_arrays():
  assert sharding.leaf_spec((3, 3, 256, 192), 2) == P(None, None, "fsdp")
  assert sharding.leaf_spec((3, 3, 64, 256), 4) == P(None, None, None, "fsdp")
  assert sharding.leaf_spec((3, 3, 3, 9), 2, min_size=1) == P()       # nothing divisible
  assert sharding.leaf_spec((256,), 2) == P()                          # small: replicated
  assert sharding.leaf_spec((4096, 16), 2, min_size=1) == P("fsdp")
  assert sharding.leaf_spec((1024, 1024), 1) == P()                    # fsdp off


def _by_path(tree):
  return {jax.tree_util.keystr(p): leaf for p, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_paper_unet_kernels_are_sharded_and_small_arrays_replicated():
  from jisp.core.config import load
  from jisp.train.runs import build_task
  task = build_task(load("configs/ddpm_fivek.py"))
  tree = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  shapes = _by_path(tree)
  mesh = sharding.make_mesh(8, fsdp=2)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  specs = {k: s.spec for k, s in _by_path(sharding.param_shardings(tree, mesh)).items()}
  sizes = {k: int(np.prod(v.shape)) for k, v in shapes.items()}
  split = [k for k, s in specs.items() if "fsdp" in s]
  whole = [k for k, s in specs.items() if "fsdp" not in s]
  assert all("kernel" in k for k in split)
  assert all(sizes[k] < sharding.MIN_SHARD_SIZE for k in whole)  # every big array splits
  assert sum(sizes[k] for k in split) > 0.95 * sum(sizes.values())
  for k in split:  # along its largest axis that 2 divides
    axis = list(specs[k]).index("fsdp")
    shape = shapes[k].shape
    assert shape[axis] % 2 == 0 and shape[axis] == max(d for d in shape if d % 2 == 0)
  # a replicate rule keeps matching leaves whole
  rep = _by_path(sharding.param_shardings(tree, mesh, replicate=(r"conv_out",)))
  assert all("fsdp" not in s.spec for k, s in rep.items() if "conv_out" in k)


def test_batch_spans_both_axes_and_sharded_arrays_really_split():
  mesh = sharding.make_mesh(8, fsdp=2)
  x = sharding.to_global({"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}, mesh)["x"]
  assert len({s.data.shape for s in x.addressable_shards}) == 1
  assert x.addressable_shards[0].data.shape == (2, 3)  # 16 examples over 8 devices
  w = jax.device_put(jnp.ones((3, 3, 64, 128)),
                     sharding.param_shardings(jax.ShapeDtypeStruct((3, 3, 64, 128),
                                                                   jnp.float32), mesh))
  assert w.addressable_shards[0].data.shape == (3, 3, 64, 64)
  with pytest.raises(ValueError, match="fsdp=3 must divide the 8 devices"):
    sharding.make_mesh(8, fsdp=3)


@pytest.mark.slow
def test_a_one_device_run_resumes_as_data_4_x_fsdp_2_with_the_same_losses(tmp_path, capsys):
  """The train loop on a (data, fsdp) mesh: a 1-device checkpoint restores onto 8 devices
  with params, EMA and optimiser state split over fsdp, and training continues with the
  losses of the unbroken 1-device run."""
  import shutil
  from helpers import MICRO, cli, losses, run_jisp
  args = ["--config", "configs/ddpm_tiny.py", *MICRO, "--config.num_steps=4",
          "--config.log_every=1", "--config.checkpoint_every=2",
          "--config.mesh.min_shard_size=256"]  # the micro U-Net's kernels are small
  ref = tmp_path / "one"
  run_jisp("train", "--workdir", str(ref), *args, devices=1)
  want = losses(ref)
  wd = tmp_path / "fsdp"
  shutil.copytree(ref, wd)
  shutil.rmtree(wd / "checkpoints" / "4")
  (wd / "metrics.jsonl").unlink()
  capsys.readouterr()
  assert cli("train", "--workdir", wd, *args, "--config.mesh.fsdp=2") == 0  # 8 devices here
  out = capsys.readouterr().out
  assert "devices=8" in out and "resumed from checkpoint step 2" in out
  line = [l for l in out.splitlines() if "mesh data 4 x fsdp 2" in l]
  assert len(line) == 1 and not line[0].split(": ")[-1].startswith("0 of"), out
  got = losses(wd)
  assert sorted(got) == [3, 4]
  for s in (3, 4):
    assert abs(got[s] - want[s]) <= 1e-5 * abs(want[s]), (s, got[s], want[s])
