"""Config files, overrides and their errors."""
import pathlib
import time

import pytest

from jisp.core import config as config_utils
from helpers import REPO, run_jisp

CONFIGS = config_utils.packaged_configs() + sorted(config_utils.ALIASES)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_with_required_top_level_keys(name):
  cfg = config_utils.load(f"{name}.py")
  for k in config_utils.REQUIRED_TOP_LEVEL:
    assert k in cfg, f"{name} lacks {k}"


def test_paper_config_matches_the_paper():
  c = config_utils.load(REPO / "configs/ddpm_fivek.py")
  assert (c.model.base_channels, tuple(c.model.channel_mults), c.model.num_res_blocks) == (64, (1, 2, 3, 4), 1)
  assert tuple(c.model.attention_stages) == (False, True, True, True)
  assert (c.diffusion.num_timesteps, c.diffusion.beta_start, c.diffusion.beta_end) == (1000, 0.0015, 0.0195)
  assert (c.data.patch_size, c.batch_size, c.num_steps) == (64, 256, 20_000)
  assert (c.optim.peak_lr, c.optim.end_lr, c.optim.warmup_steps, c.optim.grad_clip_norm) == (2e-4, 2e-6, 1000, 1.0)
  ab = {n: config_utils.load(REPO / "configs" / f"{n}.py") for n in CONFIGS
        if n.startswith("ddpm_fivek_")}
  assert ab["ddpm_fivek_nres2"].model.num_res_blocks == 2
  assert ab["ddpm_fivek_base32"].model.base_channels == 32
  assert ab["ddpm_fivek_ddpm_schedule"].diffusion.kind == "ddpm"
  assert ab["ddpm_fivek_patch128"].data.patch_size == 128
  # the same ablations as arguments of the paper config (big_vision's get_config(arg))
  both = config_utils.load("ddpm_fivek.py:nres=2,base=32,schedule=ddpm,camera=canon")
  assert (both.model.num_res_blocks, both.model.base_channels) == (2, 32)
  assert (both.diffusion.kind, both.diffusion.beta_start, both.diffusion.beta_end) == (
      "ddpm", 1e-4, 0.02)
  assert both.data.camera == "canon"
  assert config_utils.load("ddpm_fivek.py:patch=128").batch_size == 64


@pytest.mark.parametrize("spec,needle", [
    ("ddpm_fivek.py:nress=2", "unknown config argument 'nress' (did you mean 'nres'?)"),
    ("ddpm_fivek.py:nres=two", "bad value for config key 'argument nres': 'two'"),
    ("ddpm_fivek.py:schedule=cosine", "schedule must be linear_ldm, beta_linear or ddpm"),
    ("ddpm_tiny.py:x=1", "unknown config argument 'x' (known: prior, prediction)"),
    ("configs/ddpm_fivek_nres2.py:base=32", "takes no argument"),
    ("nosuch.py", "config file not found: nosuch.py"),
])
def test_bad_config_arguments_name_the_argument(spec, needle):
  with pytest.raises(config_utils.ConfigError) as e:
    config_utils.load(spec)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_config_file_of_ones_own_imports_the_packaged_ones(tmp_path):
  f = tmp_path / "mine.py"
  f.write_text("from jisp.configs import ddpm_tiny\n\n"
               "def get_config(arg=None):\n"
               "  c = ddpm_tiny.get_config()\n"
               "  c.num_steps = 7 if arg != 'long' else 70\n"
               "  return c\n")
  assert config_utils.load(f).num_steps == 7
  assert config_utils.load(f"{f}:long").num_steps == 70


def test_overrides_parse_to_the_field_type():
  cfg = config_utils.load(REPO / "configs/ddpm_tiny.py", [
      "--config.optim.peak_lr=3e-4", "--config.model.channel_mults=(1,2)",
      "--config.model.attention_stages=(False,True)",
      "--config.data.camera=canon", "--config.num_steps=7"])
  assert cfg.optim.peak_lr == 3e-4 and isinstance(cfg.optim.peak_lr, float)
  assert tuple(cfg.model.channel_mults) == (1, 2)
  assert tuple(cfg.model.attention_stages) == (False, True)
  assert cfg.data.camera == "canon" and cfg.num_steps == 7


@pytest.mark.parametrize("override,needle", [
    ("--config.optim.peek_lr=1e-3", "unknown config key 'optim.peek_lr' (did you mean 'optim.peak_lr'?)"),
    ("--config.nonsense=1", "unknown config key 'nonsense'"),
    ("--config.batch_size=lots", "bad value for config key 'batch_size': 'lots'"),
    ("--config.optim.peak_lr=fast", "bad value for config key 'optim.peak_lr': 'fast'"),
    ("--config.batch_size=0", "bad value for config key 'batch_size'"),
    ("--config.optim", "must look like --config.key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
  with pytest.raises(config_utils.ConfigError) as e:
    config_utils.load(REPO / "configs/ddpm_tiny.py", [override])
  assert needle in str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("override,needle", [
    ("--config.model.base_channel=8", "unknown config key 'model.base_channel'"),
    ("--config.num_steps=1.5", "bad value for config key 'num_steps': '1.5'"),
])
def test_cli_fails_before_any_compile(tmp_path, override, needle):
  wd = tmp_path / "wd"
  t0 = time.time()
  p = run_jisp("train", "--config", "configs/ddpm_tiny.py", "--workdir", str(wd), override, check=False)
  assert p.returncode == 2
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0]
  assert not wd.exists(), "nothing may be written for a bad config"
  assert time.time() - t0 < 30  # no model was built or compiled


def test_missing_config_file(tmp_path):
  p = run_jisp("train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w"), check=False)
  assert p.returncode == 2 and "config file not found" in p.stderr
