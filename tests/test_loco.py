"""The leave-one-camera-out budget: CPU per step is read inside the training process."""
import json

import pytest

from jisp.experiments import loco


def _metrics(path, recs):
  path.mkdir(parents=True, exist_ok=True)
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_step_cpu_counts_only_the_steps_after_the_first_logged_one(tmp_path):
  """Compilation lands in the first logged step's cpu_s, so it starts the count; eval
  records carry no cpu_s and are skipped."""
  _metrics(tmp_path, [{"step": 10, "loss": 1.0, "cpu_s": 40.0},   # compile + 10 steps
                      {"step": 20, "loss": 0.9, "cpu_s": 42.0},
                      {"step": 20, "eval/loss": 0.8},
                      {"step": 40, "loss": 0.7, "cpu_s": 46.0},
                      {"step": 80, "loss": 0.5, "cpu_s": 54.0}])
  assert loco.step_cpu(tmp_path, 20) == (12.0, 60)
  assert loco.step_cpu(tmp_path) == (14.0, 70)


def test_step_cpu_needs_two_logged_steps(tmp_path):
  _metrics(tmp_path, [{"step": 80, "loss": 0.5, "cpu_s": 54.0}])
  with pytest.raises(RuntimeError, match="fewer than two"):
    loco.step_cpu(tmp_path, 20)


def test_step_cpu_counts_only_the_last_process_of_a_resumed_run(tmp_path):
  _metrics(tmp_path, [{"step": 50, "loss": 1.0, "cpu_s": 40.0},
                      {"step": 100, "loss": 0.9, "cpu_s": 50.0},
                      {"event": "resume", "step": 100},
                      {"step": 150, "loss": 0.8, "cpu_s": 38.0},   # a new process's clock
                      {"step": 200, "loss": 0.7, "cpu_s": 48.0},
                      {"step": 250, "loss": 0.6, "cpu_s": 58.0}])
  assert loco.step_cpu(tmp_path, 50) == (20.0, 100)


def test_the_jax_free_copies_of_the_baselines_and_tones_match_their_homes():
  """loco stays importable without JAX, so it spells these out; they must not drift."""
  from jisp.isp import tone
  from jisp.train import runs
  assert loco.BASELINES == tuple(runs.BASELINES)
  assert sorted(loco.TONES) == sorted(tone.TONE_MODELS)


@pytest.mark.parametrize("name", sorted(loco.KNOWN))
@pytest.mark.parametrize("tone", loco.TONES)
def test_every_method_trains_with_the_prior_tone_asked_for(name, tone):
  """--prior-tone reaches each method's task through a config key it really has."""
  from jisp.core.config import load
  from jisp.tasks import get_task
  config, overrides, _ = loco.KNOWN[name]
  task = get_task(load(config, overrides + loco.tone_overrides(config, tone)))
  assert (task.upi_tone if task.name == "dtdm" else task.prior_tone) == tone


def _cell(psnr, **kw):
  return {"raw_psnr": psnr, **kw}


def test_table_shows_each_method_against_both_baselines():
  res = {"cpu_seconds": 120, "cpu_count": 2, "virtual_ratio": 0.5, "prior_tone": "render",
         "cameras": {"Cam A": {"methods": {
             "upi": _cell(30.0), "upi_render": _cell(35.0),
             "ssdnet": _cell(36.5, cpu_s_training=110.0),
             "ddpm": {"error": "diverged"}}}}}
  md = loco.markdown(res)
  lines = md.splitlines()
  assert lines[0] == "| held-out camera | UPI | UPI, render tone | ddpm | ssdnet |"
  assert lines[2] == "| Cam A | 30.00 | 35.00 | failed (see loco.json) | 36.50 (+6.50 / +1.50) |"
  assert "margin over UPI / UPI, render tone" in md and "render tone model" in md
  assert "measured 110-110 s" in md


def test_a_table_of_the_other_tone_model_is_not_extended(tmp_path):
  """Cells trained with another prior tone would sit in one table unmarked: refused."""
  from jisp.core.errors import DataError
  (tmp_path / "loco.json").write_text(json.dumps({"cameras": {}}))   # before the key: upi
  with pytest.raises(DataError, match="prior-tone upi"):
    loco.run(tmp_path, tmp_path, 1.0, prior_tone="render")


@pytest.mark.parametrize("name", sorted(loco.KNOWN))
def test_every_methods_schedule_ends_at_its_budgeted_last_step(name):
  """A budget buys a run its steps and its whole schedule: the learning rate reaches the
  config's end_lr at the last step, whatever the step count (SSDNet's own fixed-length
  cosine would not)."""
  from jisp.core.config import load
  from jisp.train import optim
  config, overrides, _ = loco.KNOWN[name]
  c = load(config, overrides)
  for steps in (200, 1500):
    lr = optim.make_lr_schedule(c.optim, steps)
    assert float(lr(steps)) == pytest.approx(c.optim.end_lr, rel=1e-3), steps
    assert float(lr(steps // 2)) > 10 * c.optim.end_lr
