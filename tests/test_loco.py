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
