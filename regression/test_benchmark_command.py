"""The installed phai.benchmark command, as scripts call it.

``phai.benchmark FOLDER d_min="1.0 1.6 2.0" output.prefix=bench`` writes
bench*.csv (one row per structure and resolution, with PhAI and charge
flipping columns), bench*.json and bench*.png; a bad CIF in the folder is
reported and skipped.  With no trained weights installed the network's
columns come from a small untrained network (plumbing only, no claims).
"""
import csv
import json
import os
import re
import shutil
import subprocess

import pytest

import phai_cctbx  # noqa: F401  (cctbx before torch)
from phai_cctbx import benchmark

from conftest import installed_command, shared_path


@pytest.fixture(scope="session")
def phai_benchmark():
  return installed_command("phai.benchmark")


def _run(exe, args, cwd, timeout=600):
  return subprocess.run([exe] + list(args), cwd=str(cwd), capture_output=True,
                        text=True, timeout=timeout)


def _folder(tmp_path):
  folder = tmp_path / "structures"
  folder.mkdir()
  shutil.copy(shared_path("structures", "p21c_small", "AK-Kleemiss_epoxide.cif"), folder)
  shutil.copy(shared_path("structures", "supergroups", "MaterSim_test_OXALAC02.cif"), folder)
  (folder / "zz_broken.cif").write_text("data_broken\n_cell_length_a 5.0\nloop_\n_atom_site_label\n")
  return folder


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_folder_to_tables_and_plots(phai_benchmark, weights, tmp_path):
  path, trained = weights
  folder = _folder(tmp_path)
  args = [str(folder), 'd_min=1.0 2.0', "output.prefix=bench", "nproc=2",
          "phai.trials=2", "phai.cycles=4", "phai.phase_extension=True"]
  if path:
    args.append("model.weights=%s" % path)
  proc = _run(phai_benchmark, args, tmp_path)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "zz_broken.cif" in proc.stdout and "Skipped 1 file" in proc.stdout
  # the progress bar counts the 3 readable structures, not every file (a
  # temporary path such as .../pytest-19/... must not decide this)
  counts = re.findall(r"\]\s+(\d+)/(\d+) ", proc.stdout)
  assert counts and {total for _, total in counts} == {"3"} and ("3", "3") in counts
  rows = _read_csv(tmp_path / "bench.csv")
  assert list(rows[0].keys()) == list(benchmark.COLUMNS)
  assert sorted((r["structure"], r["d_min"]) for r in rows) == [
    ("AK-Kleemiss_epoxide", "1.0000"), ("AK-Kleemiss_epoxide", "2.0000"),
    ("MaterSim_test_OXALAC02", "1.0000"), ("MaterSim_test_OXALAC02", "2.0000")]
  for r in rows:
    for column in ("phai_r", "phai_r_all", "phai_seconds", "ds_r", "ds_seconds",
                   "auto_r", "auto_seconds", "auto_fom", "cf_r", "cf_seconds"):
      assert r[column] != "", (column, r)
      assert -1.0 <= float(r[column]) <= 1.0 or column.endswith(("seconds", "fom"))
    for prefix in ("phai", "ds", "auto", "cf"):
      assert r[prefix + "_solved"] in ("yes", "no")
    assert r["auto_verdict"] and r["auto_chosen"]
  oxalic = [r for r in rows if r["structure"] == "MaterSim_test_OXALAC02"]
  assert all(r["supergroup"] == "yes" and r["space_group_number"] == "61" for r in oxalic)
  # Charge flipping solves the epoxide at 1.0 A.
  epoxide = [r for r in rows if r["structure"] == "AK-Kleemiss_epoxide" and r["d_min"] == "1.0000"]
  assert float(epoxide[0]["cf_r"]) > 0.95
  # So do dual-space phasing alone and phai.solve's default.
  assert float(epoxide[0]["ds_r"]) > 0.95 and float(epoxide[0]["auto_r"]) > 0.95
  summary = _read_csv(tmp_path / "bench_summary.csv")
  assert [s["d_min"] for s in summary] == ["1.0000", "2.0000"]
  assert list(summary[0].keys()) == list(benchmark.SUMMARY_COLUMNS)
  with open(tmp_path / "bench.json") as f:
    doc = json.load(f)
  assert doc["program"] == "phai.benchmark" and doc["nproc"] == 2
  # CPU time counts the worker processes, which did all the phasing
  assert doc["cpu_seconds"] > 0.5 * sum(float(r["ds_seconds"]) for r in rows)
  assert "s CPU (usr+sys of this process and its worker processes" in proc.stdout
  assert "auto_candidates" in doc["rows"][0]
  assert [s["file"].endswith("zz_broken.cif") for s in doc["skipped"]] == [True]
  assert len(doc["rows"]) == 4 and len(doc["rows"][0]["phai_r_per_trial"]) == 2
  assert len(doc["solved_after_trials"]["1.00"]) == 2
  assert len(doc["mean_r_per_cycle"]["2.00"]) == 4
  for name in ("bench_r_histograms.png", "bench_r_per_cycle.png", "bench_solved_per_trial.png"):
    with open(tmp_path / name, "rb") as f:
      assert f.read(4) == b"\x89PNG"


def test_without_weights_the_network_columns_say_so(tmp_path, monkeypatch):
  from iotbx.cli_parser import run_program
  from libtbx.utils import multi_out
  from phai_cctbx import weights as weights_module
  from phai_cctbx.programs.benchmark import Program, add_positional_structures
  monkeypatch.setattr(weights_module, "default_weights_available", lambda: False)
  folder = _folder(tmp_path)
  monkeypatch.chdir(tmp_path)
  log = multi_out()
  import io
  text = io.StringIO()
  log.register("log", text)
  result = run_program(program_class=Program, args=[str(folder), "d_min=1.0", "nproc=1",
                                                    "output.prefix=cf"],
                       custom_process_arguments=add_positional_structures, logger=log)
  assert "PhAI columns unavailable" in result.network_note
  assert "PhAI columns unavailable" in text.getvalue()
  rows = _read_csv(tmp_path / "cf.csv")
  assert len(rows) == 2
  assert all(r["phai_r"] == "" and r["cf_r"] != "" for r in rows)
  assert os.path.isfile(tmp_path / "cf_r_histograms.png")
  assert not os.path.exists(tmp_path / "cf_r_per_cycle.png")
  with open(tmp_path / "cf.json") as f:
    assert "PhAI columns unavailable" in json.load(f)["network_note"]


def test_experimental_mode(phai_benchmark, tmp_path):
  d = shared_path("experimental", "epoxide_P21n")
  proc = _run(phai_benchmark, [
    "experimental.reflections=%s" % os.path.join(d, "epoxide.hkl"),
    "experimental.structure=%s" % os.path.join(d, "epoxide.cif"),
    "d_min=0.8", "phai.enabled=False", "output.prefix=exp"], tmp_path)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (row,) = _read_csv(tmp_path / "exp.csv")
  assert row["structure"] == "epoxide_P21n/epoxide"
  assert float(row["completeness"]) > 0.95
  assert float(row["r_fobs_fcalc"]) > 0.99 and row["data_class"] == "fine"
  assert row["cf_r"] != "" and row["phai_r"] == ""


def test_bad_parameters_give_one_line(phai_benchmark, tmp_path):
  for args in (["d_min=1.0"], [str(tmp_path / "missing")], [str(tmp_path), "d_min=-1"]):
    proc = _run(phai_benchmark, args, tmp_path)
    assert proc.returncode != 0
    assert "Sorry" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
