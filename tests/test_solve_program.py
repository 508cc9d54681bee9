"""The phai.solve program in this process, on the shipped example: the
composition it uses and says, the starting model only for a verdict that
supports it, the run's wall times.

The phasing is the shipped network's (2 trials), or dual-space phasing where
the map itself matters; the verdict is set by the test, so that what is
checked here does not depend on how the verdict is reached.
"""
import io
import json
import os
import re

import pytest

import phai_cctbx  # noqa: F401  (cctbx before torch)
from cctbx import xray

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "phai_cctbx", "examples")
HKL = os.path.join(EXAMPLES, "epoxide.hkl")
INS = os.path.join(EXAMPLES, "epoxide.ins")
CELL = "unit_cell=4.633 8.400 6.577 90 100.37 90"
SG = "space_group=P 1 21/n 1"
FAST = ["phasing.trials=2"]


def _fast():
  """Two network trials; the network alone where the program has a choice."""
  from phai_cctbx.programs.solve import Program
  import libtbx.phil
  names = [d.path for d in libtbx.phil.parse(Program.master_phil_str).all_definitions()]
  return FAST + (["phasing.method=network"] if "phasing.method" in names else [])
MODEL_SUFFIXES = (".res", ".ins", ".hkl", "_model.cif")


@pytest.fixture
def verdict(monkeypatch):
  """Sets the verdict of every solve() the program runs: verdict.value = ..."""
  import phai_cctbx.solve as solve_module
  from phai_cctbx.weights import default_weights_available
  if not default_weights_available():
    pytest.skip("the shipped weights are not installed")
  original = solve_module.solve

  class Setter(object):
    value = "solved"

  def solve(*args, **kwds):
    result = original(*args, **kwds)
    result.verdict = Setter.value
    return result

  monkeypatch.setattr(solve_module, "solve", solve)
  return Setter


def _run(args, tmp_path, prefix="out", extra=()):
  from iotbx.cli_parser import run_program
  from phai_cctbx.programs.solve import Program, file_arguments_as_phil
  prefix = str(tmp_path / prefix)
  out = io.StringIO()
  run_program(program_class=Program, logger=out,
              args=file_arguments_as_phil(list(args) + _fast() + list(extra)
                                          + ["output.prefix=" + prefix]))
  return prefix, open(prefix + ".log").read(), json.load(open(prefix + ".json"))


def _elements(prefix):
  return sorted(sc.scattering_type for sc in
                xray.structure.from_shelx(filename=prefix + ".res").scatterers())


def test_composition_of_the_ins_is_used_and_said(verdict, tmp_path):
  """SFAC C H O / UNIT 8 16 4 of epoxide.ins: the oxygen is O (it was P)."""
  prefix, log, summary = _run([HKL, INS], tmp_path)
  assert "Composition: C8 H16 O4 (unit cell), from %s (SFAC/UNIT)" % INS in log
  assert _elements(prefix) == ["C", "C", "O"]
  res = open(prefix + ".res").read()
  assert "SFAC C H O\nUNIT 8 16 4\n" in res
  assert "ZERR 4 0.005 0.001 0.003 0 0.06 0\n" in res   # the .ins's esds
  assert "CELL 0.71073 " in res
  assert summary["model_building"]["elements"] == "C8 H16 O4"


def test_without_composition_light_elements_are_preferred(verdict, tmp_path):
  # phased by dual-space phasing, which phases these 0.5 A data right (r 0.999): the
  # element choice of the peaks is what is tested, not the network's map
  prefix, log, summary = _run([HKL, CELL, SG], tmp_path, extra=["phasing.method=dual_space"])
  assert "Composition: none in the input and no elements= given" in log
  assert set(_elements(prefix)) <= {"C", "N", "O"}   # the oxygen's peak was P
  res = open(prefix + ".res").read()
  assert "wavelength not in the input; SHELX's default 0.71073" in log
  assert "cell esds not in the input" in log and "ZERR 4 0 0 0 0 0 0" in res


def test_elements_parameter_overrides_the_input(verdict, tmp_path):
  prefix, log, summary = _run([HKL, INS, "elements=C2 H4 O", "wavelength=1.54184"],
                              tmp_path)
  assert "Composition: C2 H4 O1, from the elements= parameter (instead of " \
    "C8 H16 O4 from %s (SFAC/UNIT))" % INS in log
  res = open(prefix + ".res").read()
  assert "CELL 1.54184 " in res and "UNIT 8 16 4" in res   # formula times ZERR's Z


@pytest.mark.parametrize("value", ["not solved", "partial", "uncertain"])
def test_no_model_unless_the_verdict_supports_it(verdict, tmp_path, value):
  verdict.value = value
  prefix, log, summary = _run([HKL, INS], tmp_path)
  assert [s for s in MODEL_SUFFIXES if os.path.exists(prefix + s)] == []
  assert "No starting model written: the verdict is %r" % value in log
  assert "Starting model from" not in log
  mb = summary["model_building"]
  assert mb["built"] is False and mb["files_written"] is False
  assert value in mb["skipped"]


def test_probably_solved_writes_the_model(verdict, tmp_path):
  verdict.value = "probably solved"
  prefix, log, summary = _run([HKL, INS], tmp_path)
  assert [s for s in MODEL_SUFFIXES if os.path.exists(prefix + s)] == list(MODEL_SUFFIXES)


def test_wall_times_rounded_steps_add_up_to_the_rounded_total():
  from phai_cctbx.programs.solve import wall_times
  # rounded one by one, six steps can miss the rounded total by up to 0.03 s
  for each, finished, other in ((0.5349, 3.2094, 0.03), (0.536, 3.216, 0.0),
                                (0.536, 3.3, 0.06)):
    rows, total = wall_times(0.0, [("s%d" % i, each) for i in range(6)], finished)
    assert abs(sum(s for n, s in rows) - total) < 1e-9
    assert all(abs(s - round(s, 2)) < 1e-9 for n, s in rows)
    assert rows[-1][0] == "other" and abs(rows[-1][1] - other) < 1e-9
    assert total >= round(finished, 2)


def test_wall_times_add_up(verdict, tmp_path):
  prefix, log, summary = _run([HKL, INS], tmp_path)
  line = [l for l in log.splitlines() if l.startswith("Timings (wall clock):")][-1]
  steps = dict((name.strip(), float(v)) for name, v in
               re.findall(r"([a-z -]+) (\d+\.\d+) s", line.split(";")[0].split(":", 1)[1]))
  total = float(re.search(r"total (\d+\.\d+) s", line).group(1))
  assert {"reading", "network", "phasing", "model building", "writing"} <= set(steps)
  assert abs(total - sum(steps.values())) < 0.005   # printed steps add up exactly
  t = summary["timings_s"]
  top = [k for k in t if "/" not in k and k != "total"]
  assert abs(sum(t[k] for k in top) - t["total"]) < 0.005
  assert t["phasing"] >= t["phasing/phasing"]
