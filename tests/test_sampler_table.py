"""The README sampler table's runner (jisp.experiments.sampler_table) at tiny sizes: real
`jisp train` and `jisp eval` subprocesses, rows.jsonl, re-run skipping, the two tables."""
import json

import pytest

from helpers import MICRO, xla_flags

from jisp.experiments import sampler_table as st


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A folder eval reads as prepared (its manifest's test split: two virtual-camera DNGs)."""
  from jisp.data.virtual_camera import write_virtual_raw_dir
  root = tmp_path_factory.mktemp("data")
  raws = write_virtual_raw_dir(root / "raw", 2, seed=3, size=(32, 48))
  (root / "manifest.json").write_text(json.dumps(
      {"raw_dir": str(root / "raw"), "protocol": "invisp",
       "files": [{"path": p.name, "status": "ok", "split": "test"} for p in raws]}))
  return root


def test_rows_match_the_readme_table():
  ids = [r.id for r in st.ROWS]
  assert ids[0] == "ddpm1000" and len(set(ids)) == len(ids)
  by_id = {r.id: r for r in st.ROWS}
  assert st.eval_args(by_id["dpm_solver3"], "grid", 1, 8)[-3:] == ["--grid", "--seed", "1"]
  assert st.eval_args(by_id["ddim20_eta0"], "report", 0, 8)[-5:] == \
      ["--overlap", "8", "--tiling-report", "--seed", "0"]
  assert st.eval_args(by_id["mean2_ddim10_eta1"], "grid", 0, 8)[-7:] == \
      ["--eta", "1", "--samples", "2", "--grid", "--seed", "0"]
  with pytest.raises(st.OptionError, match="unknown row nope"):
    st.selected_rows(["ddim1", "nope"])


def test_tiny_table_end_to_end_and_rerun_skips(prepared, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("XLA_FLAGS", xla_flags(1))  # its subprocesses: 1 device, fast compile
  wd = tmp_path / "w"
  # Trained on the synthetic source (data.dir emptied): shards would only add TensorFlow's
  # start-up to this test; the README run trains on the prepared folder's shards.
  argv = ["--workdir", str(wd), "--prepared", str(prepared), "--steps", "3",
          "--rows", "ddim20_eta1,dpm_solver3,mean2_ddim10_eta1", "--max-images", "1",
          "--seeds", "0", *[f"--override={o}" for o in MICRO], "--override=--config.data.dir="]
  assert st.main(argv) == 0
  out = capsys.readouterr().out
  lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  by_key = {l["key"]: l for l in lines}
  assert set(by_key) == {"ddim20_eta1@report/seed0", "ddim20_eta1@grid/seed1",
                         "dpm_solver3@grid/seed0", "dpm_solver3@overlap/seed0",
                         "mean2_ddim10_eta1@grid/seed0"}
  assert by_key["ddim20_eta1@grid/seed1"]["status"] == "unfinished"  # --seeds 0
  for key, l in by_key.items():
    if l["status"] != "ok":
      continue
    assert l["status"] == "ok" and l["step"] == 3 and l["n_images"] == 1
    assert l["protocol"] == "invisp"
    for s in l["settings"]:
      assert 0 < s["raw_psnr"] < 100 and s["seconds_per_image"] > 0 and s["seam_ratio"] > 0
  # NFE as eval counted it: DDIM 20 grid points; DPM-Solver 19 steps + the final x0 call
  assert by_key["ddim20_eta1@report/seed0"]["nfe"] == 20
  assert by_key["dpm_solver3@grid/seed0"]["nfe"] == 20
  assert by_key["dpm_solver3@grid/seed0"]["sampler_options"]["order"] == 3
  mean2 = by_key["mean2_ddim10_eta1@grid/seed0"]
  assert (mean2["nfe"], mean2["steps"]) == (20, 10)  # two samples of 10 calls each
  assert [s["name"] for s in by_key["ddim20_eta1@report/seed0"]["settings"]] == \
      ["grid", "overlap8", "overlap8+shared"]
  assert [s["name"] for s in by_key["dpm_solver3@overlap/seed0"]["settings"]] == ["overlap8"]

  table = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
           for l in out.splitlines() if l.startswith("| ")}
  g = by_key["dpm_solver3@grid/seed0"]["settings"][0]
  assert table["DPM-Solver-3 (singlestep)"][:2] == ["19 + 1", f"{g['raw_psnr']:.2f} dB"]
  # no DDPM-1000 reference was measured: the comparison column says so
  assert table["DPM-Solver-3 (singlestep)"][3] == "unfinished / unfinished"
  rep = {s["name"]: s for s in by_key["ddim20_eta1@report/seed0"]["settings"]}
  assert table["DDIM, η = 1"][1:3] == [f"{rep['grid']['raw_psnr']:.2f} dB (seed 1: unfinished)",
                                      f"{rep['overlap8']['raw_psnr']:.2f} dB"]
  m = mean2["settings"][0]
  assert table["mean of two DDIM-10 η = 1 samples"][:2] == ["2 × 10", f"{m['raw_psnr']:.2f} dB"]
  assert table["overlap 8 px + shared initial noise"][:2] == \
      [f"{rep['overlap8+shared']['raw_psnr']:.2f} dB", f"{rep['overlap8+shared']['seam_ratio']:.2f}"]
  assert table["regular grid (paper protocol)"][2:] == ["unfinished", "unfinished"]  # eta 0
  assert (wd / "tables.md").read_text().strip() == out.split("\n\n", 1)[1].strip()

  # a re-run trains nothing and evaluates nothing: every line is kept as it was
  before = (wd / "rows.jsonl").read_text()
  assert st.main(argv) == 0
  err = capsys.readouterr().err
  assert "already at step 3" in err and err.count("finished earlier, skipped") == 4
  assert (wd / "rows.jsonl").read_text() == before


def test_rows_file_is_replaced_by_key_and_bad_lines_are_named(tmp_path):
  path = tmp_path / "rows.jsonl"
  st.append_row(path, {"key": "a", "v": 1})
  st.append_row(path, {"key": "b", "v": 2})
  st.append_row(path, {"key": "a", "v": 3})
  assert [(r["key"], r["v"]) for r in st.read_rows(path)] == [("b", 2), ("a", 3)]
  path.write_text(path.read_text() + "{broken\n")
  with pytest.raises(st.UserError, match=r"rows.jsonl:3: not a JSON line"):
    st.read_rows(path)
