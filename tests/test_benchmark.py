"""The benchmark's pieces: structures, scoring with the paper's r, tables and plots.

The network's path is exercised with a small randomly initialised network:
these tests check the plumbing and the scoring, not the network's quality.
"""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from phai_cctbx import benchmark, charge_flipping, reflection_set
from phai_cctbx.model import PhAIConfig, PhAINet
from phai_cctbx.weights import LoadedModel

STRUCTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "structures")
EPOXIDE = os.path.join(STRUCTURES, "p21c_small", "AK-Kleemiss_epoxide.cif")
IONS = os.path.join(STRUCTURES, "supergroups", "cod-developers_1010879.cif")

needs_data = pytest.mark.skipif(not os.path.isfile(EPOXIDE), reason="shared structures not present")

BROKEN_CIF = """data_broken
_cell_length_a 5.0
_cell_length_b 6.0
loop_
_atom_site_label
_atom_site_fract_x
C1 0.1
"""


def tiny_model():
  import torch
  torch.manual_seed(0)
  net = PhAINet(PhAIConfig(filters=8, cnn_depth=1, dim=64, dim_exp=64,
                           dim_token_exp=16, mlp_depth=1)).eval()
  return LoadedModel(net, "max", {}, "random tiny network")


@pytest.fixture
def folder(tmp_path):
  if not os.path.isfile(EPOXIDE):
    pytest.skip("shared structures not present")
  shutil.copy(EPOXIDE, tmp_path / "epoxide.cif")
  (tmp_path / "broken.cif").write_text(BROKEN_CIF)
  (tmp_path / "notes.txt").write_text("not a cif")
  return tmp_path


def test_find_structures_takes_cifs_of_folders_and_files(folder):
  found = benchmark.find_structures([str(folder), str(folder / "epoxide.cif")])
  assert [os.path.basename(p) for p in found] == ["broken.cif", "epoxide.cif"]


def test_broken_cif_is_reported_and_skipped(folder):
  with pytest.raises(benchmark.Sorry):
    benchmark.read_structure(str(folder / "broken.cif"))
  out = benchmark.benchmark_structure(str(folder / "broken.cif"), benchmark.Settings(d_min=(2.0,)))
  assert out["rows"] == [] and out["skipped"].startswith("broken.cif:")


@needs_data
def test_ions_without_form_factors_get_the_neutral_atom():
  xs = benchmark.read_structure(IONS)
  types = set(sc.scattering_type for sc in xs.scatterers())
  assert "B3+" not in types and "H1+" not in types
  assert benchmark.structure_factors(xs, 2.0).size() > 0


@needs_data
def test_charge_flipping_row_uses_the_papers_r():
  settings = benchmark.Settings(d_min=(1.0,), phai=False)
  out = benchmark.benchmark_structure(EPOXIDE, settings)
  assert out["skipped"] is None
  (row,) = out["rows"]
  assert row["cf_r"] > 0.95 and row["cf_solved"]
  assert row["cf_seconds"] > 0
  # The same r, computed here from the same pieces.
  from phai_cctbx import symmetry
  xs = benchmark.read_structure(EPOXIDE)
  std = symmetry.prepare(xs.crystal_symmetry())
  f_true = benchmark.structure_factors(xs, 1.0)
  seed = benchmark._job_seed(settings.random_seed, EPOXIDE, 1.0)
  cf = charge_flipping.run(f_true.as_amplitude_array(), random_seed=seed)
  values, present = std.map_to_reflection_set(f_true)
  weights = np.abs(values) * present * reflection_set.unique_mask()
  signs, _ = charge_flipping.signs_on_reflection_set(cf.f_calc, std)
  r = reflection_set.sign_correlation(weights, np.where(values.real < 0, -1.0, 1.0), signs)
  assert row["cf_r"] == pytest.approx(r)


@needs_data
def test_network_path_with_trials_cycles_extension_and_removal():
  settings = benchmark.Settings(d_min=(1.0, 2.0), trials=2, cycles=3, phase_extension=True,
                                remove_fraction=0.2, charge_flipping=False)
  out = benchmark.benchmark_structure(EPOXIDE, settings, tiny_model())
  assert out["skipped"] is None
  rows = out["rows"]
  assert [r["d_min"] for r in rows] == [1.0, 2.0]
  for row in rows:
    assert -1.0 <= row["phai_r"] <= 1.0 and -1.0 <= row["phai_r_all"] <= 1.0
    assert row["phai_solved"] == (row["phai_r"] > benchmark.SOLVED_R)
    assert len(row["phai_r_per_trial"]) == 2
    assert np.asarray(row["phai_r_per_cycle"]).shape == (2, 3)
    assert row["phai_r"] == pytest.approx(row["phai_r_per_trial"][row["phai_best_trial"] - 1])
    assert row["phai_r_first_trial"] == row["phai_r_per_trial"][0]
    # Each trial's final r is the r after its last cycle.
    assert row["phai_r_per_cycle"][0][-1] == pytest.approx(row["phai_r_first_trial"])
    assert row["completeness"] < 1.0
    assert row["phai_seconds"] > 0
    assert "cf_r" not in row
  assert rows[0]["n_on_list"] > rows[1]["n_on_list"]


def _row(d, phai_trials, cf_r, cycles=None):
  solved_at = next((i + 1 for i, r in enumerate(phai_trials) if r > 0.95), None)
  return {"d_min": d, "phai_r": max(phai_trials), "phai_solved": max(phai_trials) > 0.95,
          "phai_r_first_trial": phai_trials[0], "phai_first_solved_trial": solved_at,
          "phai_r_per_trial": phai_trials, "phai_seconds": 1.0,
          "phai_r_per_cycle": cycles or [[0.5, 0.9]] * len(phai_trials),
          "cf_r": cf_r, "cf_solved": cf_r > 0.95, "cf_seconds": 0.5}


def test_summary_trials_and_cycles_curves():
  rows = [_row(1.0, [0.99, 0.2], 0.97), _row(1.0, [0.3, 0.98], 0.4),
          _row(2.0, [0.1, 0.2], 0.1, cycles=[[0.1, 0.3], [0.2, 0.2]])]
  summary = benchmark.summarise(rows, (1.0, 2.0))
  s1, s2 = summary
  assert s1["n_structures"] == 2 and s1["phai_fraction_solved"] == 1.0
  assert s1["phai_fraction_solved_first_trial"] == 0.5
  assert s1["cf_fraction_solved"] == 0.5 and s1["cf_median_r"] == pytest.approx(0.685)
  assert s2["phai_fraction_solved"] == 0.0
  assert benchmark.solved_after_trials(rows, 1.0) == [0.5, 1.0]
  assert benchmark.mean_r_per_cycle(rows, 2.0) == pytest.approx([0.1, 0.3])
  lines = benchmark.format_summary(summary)
  assert len(lines) == 4 and "100%" in lines[2] and "dual-space alone" in lines[0]


def test_tables_and_plots_are_written(tmp_path):
  from phai_cctbx import benchmark_plots
  rows = [dict(_row(1.0, [0.99, 0.2], 0.97), structure="a"),
          dict(_row(2.0, [0.3, 0.98], 0.4), structure="b")]
  csv_file = str(tmp_path / "t.csv")
  benchmark.write_csv(csv_file, rows, benchmark.COLUMNS)
  with open(csv_file) as f:
    table = list(csv.DictReader(f))
  assert list(table[0].keys()) == list(benchmark.COLUMNS)
  assert table[0]["phai_solved"] == "yes" and table[1]["cf_solved"] == "no"
  json_file = str(tmp_path / "t.json")
  benchmark.write_json(json_file, {"rows": rows, "x": np.float32(0.5), "y": np.bool_(True)})
  with open(json_file) as f:
    doc = json.load(f)
  assert doc["rows"][0]["phai_r_per_trial"] == [0.99, 0.2] and doc["y"] is True
  for plot, name in ((benchmark_plots.plot_r_histograms, "h.png"),
                     (benchmark_plots.plot_r_per_cycle, "c.png"),
                     (benchmark_plots.plot_solved_per_trial, "s.png")):
    out = plot(str(tmp_path / name), rows, (1.0, 2.0))
    with open(out, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # Without the network's columns there is nothing to draw for Fig. 4.
  cf_only = [{"d_min": 1.0, "cf_r": 0.5}]
  assert benchmark_plots.plot_r_per_cycle(str(tmp_path / "n.png"), cf_only, (1.0,)) is None


def test_histogram_legend_counts_refused_structures_as_not_solved():
  from phai_cctbx import benchmark_plots
  rows = [{"ds_r": 0.99, "ds_solved": True}, {"ds_r": 0.5, "ds_solved": False},
          {"ds_solved": False},  # refused: too few reflections, no r
          {"ds_r": 0.97, "ds_solved": True}]
  assert benchmark_plots.solved_label(rows, "ds", "dual-space alone") \
    == "dual-space alone: 50% solved, 1 refused"
  assert benchmark_plots.solved_label(rows[:2], "ds", "x") == "x: 50% solved"
  assert benchmark_plots.solved_label(rows, "auto", "x") is None


def test_progress_line():
  assert benchmark.progress_line(0, 4, "x", width=8) == "[        ] 0/4 x"
  assert benchmark.progress_line(2, 4, "x", width=8) == "[===>    ] 2/4 x"
  assert benchmark.progress_line(4, 4, "x", width=8) == "[========] 4/4 x"


def test_experimental_classes():
  assert benchmark.classify_data(0.9, 0.95) == "fine"
  assert benchmark.classify_data(0.8, 0.95) == "poor"
  assert benchmark.classify_data(0.9, 0.85) == "poor"


def test_a_cif_that_crashes_the_reader_is_skipped_and_the_run_goes_on(folder):
  # iotbx's CIF parser crashes the process on a loop with no values: the
  # workers take that, and only that file is lost.
  (folder / "crash.cif").write_text("data_x\n_cell_length_a 5.0\nloop_\n_atom_site_label\n")
  tasks = [("structure", str(folder / n)) for n in ("crash.cif", "epoxide.cif")]
  seen = []
  results = benchmark.run_all(tasks, benchmark.Settings(d_min=(2.0,), phai=False),
                              nproc=1, progress=lambda done, total, r: seen.append(done))
  assert seen == [1, 2]
  assert "crashed" in results[0]["skipped"] and results[0]["rows"] == []
  assert results[1]["skipped"] is None and len(results[1]["rows"]) == 1
