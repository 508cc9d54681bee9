"""The installed phai.solve command on real data, per input format and space-group case.

Each run writes PREFIX.mtz/.fcf/.ccp4/.json/.log; the phases in the MTZ are
compared with those of the refined (or known) structure by the paper's r (max
over the 8 origins of P2_1/c).  That comparison needs trained weights: while
none are installed, the runs use a small untrained network and the r check
is skipped, everything else is checked.  With the default hybrid search
(dual-space phasing and the network) every measured data set here must be
solved (r above the case's threshold, and a verdict of solved or probably
solved where that threshold is 0.95).

Each run also builds a starting model: PREFIX.res/.ins/.hkl/_model.cif when
the map has clear peaks (read back with iotbx), else a warning in the log and
JSON and no model files.  With the untrained network either may happen; the
model of true phases is checked in tests/test_solve_model_building.py.
"""
import json
import os

import numpy as np
import pytest

from cctbx import miller, sgtbx
from cctbx.array_family import flex

from phai_cctbx import reflection_set, symmetry

from conftest import run_solve, shared_path

PHASING = ["phasing.trials=4", "phasing.cycles=8"]
MODEL_SUFFIXES = (".res", ".ins", ".hkl", "_model.cif")


def _structure(cif):
  """The first structure of a CIF, ions as neutral atoms for the form factors."""
  import re
  import iotbx.cif
  xs = list(iotbx.cif.reader(file_path=cif).build_crystal_structures().values())[0]
  for sc in xs.scatterers():
    sc.scattering_type = re.sub(r"[0-9+-]+$", "", sc.scattering_type)
  return xs


def _check_outputs(prefix, n_min=50):
  for s in (".mtz", ".fcf", ".ccp4", ".json", ".log"):
    assert os.path.isfile(prefix + s), prefix + s
  summary = json.load(open(prefix + ".json"))
  from phai_cctbx.solve import VERDICTS
  assert summary["verdict"] in [v[0] for v in VERDICTS]
  # the network's trials are listed when it ran (the search stops after the
  # first stage that solves)
  assert len(summary["trials"]) in (0, 4)
  assert summary["candidates"] and summary["chosen"]
  assert summary["n_phased"] >= n_min
  log = open(prefix + ".log").read()
  for words in ("Read ", "Merged", "change of basis", "reflection list", "Candidates",
                "Verdict", "Timings"):
    assert words in log
  from iotbx import mtz
  m = mtz.object(prefix + ".mtz")
  labels = [c.label() for c in m.columns()]
  for label in ("FP", "SIGFP", "PHIB", "FOM", "FWT", "PHWT"):
    assert label in labels
  _check_model_files(prefix, summary, log, m)
  return summary, m


def _check_model_files(prefix, summary, log, m):
  """The starting model's files read back, or the warning why there are none."""
  mb = summary["model_building"]
  made = [s for s in MODEL_SUFFIXES if os.path.exists(prefix + s)]
  if not mb["built"]:   # phases only asked for
    assert made == [] and mb["skipped"], made
    return None
  if not mb["files_written"]:
    assert made == [], made
    assert mb["warnings"] and mb["skipped"]
    assert "WARNING" in log and "No model files written" in log
    return None
  assert made == list(MODEL_SUFFIXES)
  assert open(prefix + ".ins").read() == open(prefix + ".res").read()
  from cctbx import xray
  xs = xray.structure.from_shelx(filename=prefix + ".res")
  assert xs.space_group() == m.space_group()
  assert xs.unit_cell().is_similar_to(m.crystals()[0].unit_cell(), 1e-3, 1e-2)
  assert [sc.label.upper() for sc in xs.scatterers()] == [
    a["label"].upper() for a in mb["atoms"]]
  assert mb["n_atoms"] == xs.scatterers().size() > 0
  assert mb["n_fragments"] == len(mb["fragments"]) >= 1
  from iotbx.reflection_file_reader import any_reflection_file
  hkl = any_reflection_file(prefix + ".hkl=hklf4").as_miller_arrays(
    crystal_symmetry=xs)[0]
  assert hkl.is_xray_intensity_array() and hkl.size() > 0
  import iotbx.cif
  cif_xs = list(iotbx.cif.reader(file_path=prefix + "_model.cif")
                .build_crystal_structures().values())[0]
  assert cif_xs.scatterers().size() == xs.scatterers().size()
  assert ("Starting model from the atom model of the search" if mb["source"] == "atom model"
          else "Starting model from the E-map") in log
  return xs


def _r_against_structure(m, xs, f_obs=None):
  """The paper's r between the MTZ's PHIB and the structure's phases."""
  arrays = {a.info().label_string(): a for a in m.as_miller_arrays()}
  fp = arrays["FP,SIGFP"]
  phib = arrays["PHIB"]
  fp, phib = fp.common_sets(phib)
  cs = fp.crystal_symmetry()
  std = symmetry.prepare(cs)
  coeffs = fp.phase_transfer(phib, deg=True)
  xs = xs.customized_copy(crystal_symmetry=cs) if xs.space_group() == cs.space_group() else xs
  fc = miller.set(cs, fp.indices(), anomalous_flag=False).structure_factors_from_scatterers(
    xs, algorithm="direct").f_calc()
  pred, present = std.map_to_reflection_set(coeffs, fill_absent=False)
  true, present_t = std.map_to_reflection_set(fc, fill_absent=False)
  sel = present & present_t & ~reflection_set.systematic_absences()
  amps = np.where(sel, np.abs(pred), 0.0)
  return reflection_set.sign_correlation(amps, np.sign(true.real), np.sign(pred.real))


def _solve_and_check(exe, weights, tmp_path, args, structure=None, min_r=0.95, n_min=50):
  path, trained = weights
  extra = ["model.weights=%s" % path] if path else []
  prefix = str(tmp_path / "out")
  proc = run_solve(exe, list(args) + PHASING + extra + ["output.prefix=" + prefix], tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
  summary, m = _check_outputs(prefix, n_min=n_min)
  if structure is not None:
    r = _r_against_structure(m, structure)
    assert -1.0 <= r <= 1.0
    if not trained:
      pytest.skip("no trained weights installed (default_weights_available() is "
                  "False): phases not compared with the structure (r = %.2f from "
                  "an untrained network)" % r)
    assert r > min_r, "r = %.3f (verdict %s)" % (r, summary["verdict"])
    if min_r >= 0.95:
      # Right phases are called solved or probably solved, never less (on
      # COD 2016452's measured data 8 of 16 random starts agree: probably
      # solved, the calibrated level for that agreement).
      assert summary["verdict"] in ("solved", "probably solved"), \
        "r = %.3f but verdict %s" % (r, summary["verdict"])
  return summary, m


# --- measured data, one run per input format --------------------------------------

def test_shelx_hklf4_with_cell_and_space_group(phai_solve, weights, tmp_path):
  """The scripted form: data.hkl unit_cell=... space_group=... output.prefix=..."""
  d = shared_path("experimental", "epoxide_P21n")
  summary, m = _solve_and_check(
    phai_solve, weights, tmp_path,
    [os.path.join(d, "epoxide.hkl"), "unit_cell=4.633 8.400 6.577 90 100.37 90",
     "space_group=P 1 21/n 1"], structure=_structure(os.path.join(d, "epoxide.cif")))


def test_shelx_hklf4_with_cif_symmetry_large_cell(phai_solve, weights, tmp_path):
  d = shared_path("experimental", "water_P21c")
  summary, m = _solve_and_check(
    phai_solve, weights, tmp_path,
    [os.path.join(d, "water.hkl"), os.path.join(d, "water.cif")],
    structure=_structure(os.path.join(d, "water.cif")), min_r=0.8)
  assert summary["reflection_list"]["n_dropped"] > 0  # b = 16.1 A: truncated
  log = open(str(tmp_path / "out.log")).read()
  assert "exceeds 10 A" in log and "effective resolution" in log


def test_cod_refln_cif(phai_solve, weights, tmp_path):
  d = shared_path("experimental", "cod2016452_P21c")
  _solve_and_check(phai_solve, weights, tmp_path, [os.path.join(d, "2016452.hkl")],
                   structure=_structure(os.path.join(d, "2016452.cif")))
  # The .fcf written reads back as input (LIST 3 amplitudes).
  fcf = str(tmp_path / "again.fcf")
  os.rename(str(tmp_path / "out.fcf"), fcf)
  for s in (".mtz", ".ccp4", ".json", ".log", "_extended.mtz") + MODEL_SUFFIXES:
    if os.path.exists(str(tmp_path / ("out" + s))):
      os.remove(str(tmp_path / ("out" + s)))
  summary, m = _solve_and_check(phai_solve, weights, tmp_path, [fcf],
                                structure=_structure(os.path.join(d, "2016452.cif")))
  assert "amplitudes as read" in summary["data"]["treatment"]


def test_cif_with_embedded_hkl_and_res(phai_solve, weights, tmp_path):
  d = shared_path("experimental", "serine_P21c")
  xs = _structure(os.path.join(d, "Serin.cif"))
  summary, m = _solve_and_check(phai_solve, weights, tmp_path, [os.path.join(d, "Serin.cif")],
                                structure=xs, min_r=0.8)
  assert summary["data"]["n_systematic_absences"] > 0


def test_hklf3_amplitudes_of_the_phai_notebook(phai_solve, weights, tmp_path):
  """189 amplitudes to 1.5 A and the formula without Z, as a user has them:
  Z = 2 (the molecule on an inversion centre) from the cell volume, and the
  atom search's 8 atoms solve it."""
  d = shared_path("experimental")
  _solve_and_check(
    phai_solve, weights, tmp_path,
    [os.path.join(d, "phai_notebook", "COD_2016452.hkl"), "hklf=3",
     "unit_cell=9.748 8.89 7.566 90 112.74 90", "space_group=P 1 21/c 1",
     "elements=C14 H14 O2"],
    structure=_structure(os.path.join(d, "cod2016452_P21c", "2016452.cif")))
  log = open(str(tmp_path / "out.log")).read()
  assert "the formula times Z = 2 (Z not given: estimated from the cell volume" in log
  # Solved by an atom model: the starting model is its atoms (ZERR: its Z).
  summary = json.load(open(str(tmp_path / "out.json")))
  if summary["chosen"].startswith("atom model"):
    assert summary["model_building"]["source"] == "atom model"
    assert "ZERR 2 " in open(str(tmp_path / "out.res")).read()


def test_mtz_with_labels(phai_solve, weights, tmp_path):
  d = shared_path("experimental", "cod2016452_P21c")
  from phai_cctbx import data_input
  data = data_input.read_data(os.path.join(d, "2016452.hkl"))
  i = data.miller_array
  ds = i.as_mtz_dataset(column_root_label="IOBS")
  ds.add_miller_array(i.customized_copy(data=i.data() * 0 + 1.0), column_root_label="IDUMMY")
  fn = str(tmp_path / "data.mtz")
  ds.mtz_object().write(fn)
  _solve_and_check(phai_solve, weights, tmp_path, [fn, "labels=IOBS,SIGIOBS"],
                   structure=_structure(os.path.join(d, "2016452.cif")))


# --- the starting model ----------------------------------------------------------

def test_starting_model_files(phai_solve, weights, tmp_path):
  """Model files next to the phases: the .hkl holds the intensities as read.

  Only a verdict of "solved" or "probably solved" gives a model; otherwise
  the log says why there is none (the model of a run that does get one is
  checked in tests/test_solve_program.py, the verdict set by the test)."""
  d = shared_path("experimental", "epoxide_P21n")
  summary, m = _solve_and_check(
    phai_solve, weights, tmp_path,
    [os.path.join(d, "epoxide.hkl"), "unit_cell=4.633 8.400 6.577 90 100.37 90",
     "space_group=P 1 21/n 1", "elements=C2 H4 O", "wavelength=0.71073"])
  mb = summary["model_building"]
  log = open(str(tmp_path / "out.log")).read()
  if summary["verdict"] not in ("solved", "probably solved"):
    assert not mb["built"] and summary["verdict"] in mb["skipped"]
    assert "No starting model written: the verdict is" in log
    return
  assert mb["built"] and mb["elements"] == "C2 H4 O1" and mb["map_type"] == "E"
  assert "elements: C2 H4 O1" in log
  if not mb["files_written"]:
    return   # the untrained network's map: checked by _check_model_files
  from phai_cctbx import data_input
  data = data_input.read_data(
    os.path.join(d, "epoxide.hkl"), unit_cell="4.633 8.400 6.577 90 100.37 90",
    space_group="P 1 21/n 1").miller_array
  from iotbx.reflection_file_reader import any_reflection_file
  hkl = any_reflection_file(str(tmp_path / "out.hkl") + "=hklf4").as_miller_arrays(
    crystal_symmetry=data, merge_equivalents=False)[0]
  assert hkl.size() == data.size()
  assert list(hkl.indices()) == list(data.indices())
  assert flex.linear_correlation(hkl.data(), data.data()).coefficient() > 0.9999
  assert "CELL 0.71073 " in open(str(tmp_path / "out.res")).read()


def test_phases_only(phai_solve, weights, tmp_path):
  """build_model=False: the phase outputs, no model files, no model in the log."""
  d = shared_path("experimental", "epoxide_P21n")
  path = weights[0]
  prefix = str(tmp_path / "out")
  proc = run_solve(phai_solve, [
    os.path.join(d, "epoxide.hkl"), "unit_cell=4.633 8.400 6.577 90 100.37 90",
    "space_group=P 1 21/n 1", "build_model=False", "output.prefix=" + prefix]
    + PHASING + (["model.weights=%s" % path] if path else []), tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary, m = _check_outputs(prefix)
  assert summary["model_building"]["built"] is False
  assert not [s for s in MODEL_SUFFIXES if os.path.exists(prefix + s)]
  assert "Starting model" not in open(prefix + ".log").read()


def test_output_would_replace_input(phai_solve, weights, tmp_path):
  """prefix.hkl of the model is never the input data, even with overwrite."""
  with open(str(tmp_path / "good.hkl"), "w") as f:
    f.write(_good_hkl_text())
  w = ["model.weights=%s" % weights[0]] if weights[0] else []
  proc = run_solve(phai_solve, ["good.hkl", CELL, SG, "output.prefix=good",
                                "output.overwrite=True"] + w, tmp_path)
  err = proc.stderr.strip()
  assert proc.returncode != 0 and len(err.splitlines()) == 1
  assert "would overwrite the input file" in err
  assert sorted(os.listdir(str(tmp_path))) == ["good.hkl"]
  assert open(str(tmp_path / "good.hkl")).read() == _good_hkl_text()


# --- space-group cases: calculated data of known structures --------------------------

def _calculated_hkl(xs, tmp_path, d_min=1.0, name="calc"):
  """SHELX HKLF 4 intensities of a structure, with 2 % sigmas."""
  from iotbx.shelx.hklf import miller_array_export_as_shelx_hklf
  f = xs.structure_factors(d_min=d_min, algorithm="direct").f_calc().amplitudes()
  i = f.f_as_f_sq()
  i = i.customized_copy(data=i.data() * (9999.0 / flex.max(i.data())))
  i = i.customized_copy(sigmas=i.data() * 0.02 + 0.5)
  fn = str(tmp_path / (name + ".hkl"))
  with open(fn, "w") as fh:
    miller_array_export_as_shelx_hklf(i, file_object=fh, normalise_if_format_overflow=True)
  cell = " ".join("%.5f" % x for x in xs.unit_cell().parameters())
  return [fn, "unit_cell=" + cell, "space_group=" + str(xs.space_group_info())]


SETTINGS = [
  ("p21c_small", "MaterSim_IMAZOL06.cif", "c,-b,a"),        # to P 1 21/a 1
  ("p21c_small", "dwiddo_GLYCIN75.cif", "a,b,a+c"),         # to P 1 21/n 1
  ("p21c_small", "dkratzert_1000003.cif", "a+c,b,c"),       # non-reduced cell
  ("p21c_small", "cod-developers_2103766.cif", "b,c,a"),    # to P 21/b 1 1 (or similar)
]


@pytest.mark.parametrize("folder,name,cb", SETTINGS)
def test_settings_of_p21c(phai_solve, weights, tmp_path, folder, name, cb):
  xs = _structure(shared_path("structures", folder, name))
  xs = xs.change_basis(sgtbx.change_of_basis_op(cb))
  assert xs.space_group_info().type().number() == 14
  summary, m = _solve_and_check(phai_solve, weights, tmp_path,
                                _calculated_hkl(xs, tmp_path), structure=xs)
  assert m.space_group() == xs.space_group()
  assert summary["space_group"] == str(xs.space_group_info())


SUPERGROUPS = [
  ("dkratzert_1000007-multi__1000007.cif", 15, []),   # C 1 2/c 1
  ("cod-developers_2100348-benzene.cif", 61, []),     # P b c a
  # Unsolved without its composition: the guessed atom search and its
  # heavier guesses would only add time (75 s) to a check of the symmetry.
  pytest.param("cod-developers_1010879.cif", 62,       # P b n m (Pnma)
               ["phasing.atom_search.guess_composition=False"],
               marks=pytest.mark.xfail(reason="neither the network nor dual-space "
                                       "phasing solves it from 1.0 A data (r 0.72-0.76 "
                                       "in phai.benchmark)", strict=False)),
  ("BlueObelisk_1000193.cif", 12, []),                # C 1 2/m 1
]


@pytest.mark.parametrize("name,number,extra", SUPERGROUPS)
def test_supergroups(phai_solve, weights, tmp_path, name, number, extra):
  xs = _structure(shared_path("structures", "supergroups", name))
  assert xs.space_group_info().type().number() == number
  summary, m = _solve_and_check(phai_solve, weights, tmp_path,
                                _calculated_hkl(xs, tmp_path) + extra, structure=xs,
                                n_min=30)
  assert summary["supergroup"]
  assert m.space_group() == xs.space_group()
  log = open(str(tmp_path / "out.log")).read()
  assert "supergroup of P2_1/c" in log
  # network phases (of the P2_1/c subgroup) are checked against the
  # supergroup's equivalents; dual-space phases get its symmetry directly
  assert ("Symmetry check" in log) == summary["chosen"].startswith("network"), log


def test_pnma_measured(phai_solve, weights, tmp_path):
  d = shared_path("experimental", "CpNa_Pnma")
  summary, m = _solve_and_check(phai_solve, weights, tmp_path, [os.path.join(d, "iam.cif")],
                                structure=_structure(os.path.join(d, "iam.cif")), min_r=0.8)
  assert summary["supergroup"] and summary["space_group_number"] == 62


def test_example_run(phai_solve, weights, tmp_path):
  """The README's example: the data shipped in phai_cctbx/examples."""
  import phai_cctbx
  ex = os.path.join(os.path.dirname(phai_cctbx.__file__), "examples")
  if not os.path.isfile(os.path.join(ex, "epoxide.hkl")):
    pytest.skip("example data not installed")
  _solve_and_check(phai_solve, weights, tmp_path,
                   [os.path.join(ex, "epoxide.hkl"), os.path.join(ex, "epoxide.ins")])


# --- bad input: one line, non-zero exit, no traceback, no output ----------------------

CELL = "unit_cell=6.1 7.2 8.3 90 104 90"
SG = "space_group=P 1 21/c 1"


def _good_hkl_text(n_max=6):
  lines = []
  for h in range(-n_max, n_max + 1):
    for k in range(0, n_max + 1):
      for l in range(0, n_max + 1):
        if (h, k, l) != (0, 0, 0):
          lines.append("%4d%4d%4d%8.2f%8.2f" % (h, k, l, 10.0 + (h * 7 + k * 3 + l) % 13, 1.0))
  return "\n".join(lines) + "\n   0   0   0    0.00    0.00\n"


def _bad_cases(tmp_path, weights_path):
  import torch
  good = _good_hkl_text()
  files = {
    "empty.hkl": "",
    "truncated.hkl": "  -6   0   1   12.00    1.00\n  -6   0\n" + good,
    "garbled.hkl": "  -6   0   1   12.00    1.00\n  -6   0   2   x2.00    1.00\n" + good,
    "letters.hkl": "  ab  cd  ef   12.00    1.00\n" + good,
    "nan.hkl": "  -6   0   1     nan    1.00\n" + good,
    "zeros.hkl": "".join("%4d%4d%4d%8.2f%8.2f\n" % (h, 1, 1, -1.0 * (h % 2), 1.0)
                         for h in range(1, 9)) + "   0   0   0    0.00    0.00\n",
    "few.hkl": "".join("%4d%4d%4d%8.2f%8.2f\n" % (h, 1, 1, 20.0, 1.0)
                       for h in range(1, 9)) + "   0   0   0    0.00    0.00\n",
    "good.hkl": good,
    "corrupt.pt": "this is not a weights file",
  }
  for name, text in files.items():
    with open(str(tmp_path / name), "w") as f:
      f.write(text)
  torch.save({"net_a.1.weight": torch.zeros(3, 1, 3, 3, 3)}, str(tmp_path / "wrong_shape.pt"))
  from cctbx import crystal
  cs = crystal.symmetry(unit_cell=(6.1, 7.2, 8.3, 90, 104, 90), space_group_symbol="P 1 21/c 1")
  ms = miller.build_set(cs, anomalous_flag=False, d_min=1.0)
  f = ms.array(data=flex.double(ms.size(), 3.0), sigmas=flex.double(ms.size(), 1.0))
  f.set_observation_type_xray_amplitude()
  f.as_mtz_dataset(column_root_label="FP").mtz_object().write(str(tmp_path / "data.mtz"))
  w = ["model.weights=%s" % weights_path] if weights_path else []
  p_1 = os.path.join(shared_path("experimental", "p-1_a_P-1"), "p-1_a.cif")
  return [
    ("missing file", ["nothere.hkl", CELL, SG] + w, "not found"),
    ("empty file", ["empty.hkl", CELL, SG] + w, "empty"),
    ("truncated line", ["truncated.hkl", CELL, SG] + w, "truncated"),
    ("garbled line", ["garbled.hkl", CELL, SG] + w, "non-numeric"),
    ("non-numeric indices", ["letters.hkl", CELL, SG] + w, "non-numeric"),
    ("NaN", ["nan.hkl", CELL, SG] + w, "NaN"),
    ("only zero or negative", ["zeros.hkl", CELL, SG] + w, "zero or negative"),
    ("too few reflections", ["few.hkl", CELL, SG] + w, "fewer than"),
    ("no cell or space group", ["good.hkl"] + w, "unit_cell="),
    ("no space group", ["good.hkl", CELL] + w, "space_group="),
    ("unsupported space group", [p_1] + w, "not supported"),
    ("cell inconsistent with the group", ["good.hkl", "unit_cell=6.1 7.2 8.3 80 104 90", SG] + w,
     "not compatible"),
    ("MTZ label that does not exist", ["data.mtz", "labels=FOBS"] + w, "labels"),
    ("weights file missing", ["good.hkl", CELL, SG, "model.weights=none.pt"], "not found"),
    ("weights file corrupt", ["good.hkl", CELL, SG, "model.weights=corrupt.pt"], "weights"),
    ("weights of the wrong shape", ["good.hkl", CELL, SG, "model.weights=wrong_shape.pt"], "weights"),
    ("bad parameter value", ["good.hkl", CELL, SG, "phasing.trials=abc"] + w, "trials"),
    ("zero trials", ["good.hkl", CELL, SG, "phasing.trials=0"] + w, "trials"),
    ("zero network frames", ["good.hkl", CELL, SG, "phasing.network_frames=0"] + w,
     "network_frames"),
    ("negative more starts", ["good.hkl", CELL, SG, "phasing.dual_space.more_starts=-1"] + w,
     "more_starts"),
    ("negative omit refinement", ["good.hkl", CELL, SG,
                                  "phasing.dual_space.omit_refinement=-2"] + w,
     "omit_refinement"),
    ("zero atom-search restarts", ["good.hkl", CELL, SG, "phasing.atom_search.restarts=0"] + w,
     "atom_search.restarts"),
    ("negative peak maps", ["good.hkl", CELL, SG, "phasing.atom_search.peak_maps=-1"] + w,
     "peak_maps"),
    ("zero peak rounds", ["good.hkl", CELL, SG, "phasing.atom_search.peak_rounds=0"] + w,
     "peak_rounds"),
    ("too many sign combinations", ["good.hkl", CELL, SG,
                                    "phasing.dual_space.sign_combinations=20"] + w,
     "sign_combinations"),
    ("unknown element", ["good.hkl", CELL, SG, "elements=C H N Q"] + w, "not an element"),
    ("empty element list", ["good.hkl", CELL, SG, "elements="] + w, "elements"),
    ("zero formula units", ["good.hkl", CELL, SG, "elements=C6 H6", "z=0"] + w,
     "model_building.z"),
    ("bad wavelength", ["good.hkl", CELL, SG, "wavelength=-1"] + w, "wavelength"),
    ("bad map type", ["good.hkl", CELL, SG, "map_type=G"] + w, "map_type"),
  ]


def test_bad_input(phai_solve, weights, tmp_path):
  """Every bad input: one 'Sorry' line naming the problem, exit 1, no output files."""
  cases = _bad_cases(tmp_path, weights[0])
  failures = []
  for number, (what, args, words) in enumerate(cases):
    # run in a folder of its own; input files by absolute path
    run_dir = tmp_path / ("case%02d" % number)
    run_dir.mkdir()
    args = [str(tmp_path / a) if os.path.exists(str(tmp_path / a)) or a == "nothere.hkl"
            else a for a in args]
    args = [a.replace("model.weights=", "model.weights=" + str(tmp_path) + os.sep)
            if a.startswith("model.weights=") and not os.path.isabs(a.split("=", 1)[1]) else a
            for a in args]
    proc = run_solve(phai_solve, args + ["output.prefix=bad"], run_dir)
    err = proc.stderr.strip()
    made = set(os.listdir(str(run_dir)))
    ok = (proc.returncode != 0 and "Traceback" not in err + proc.stdout
          and err.startswith("Sorry:") and len(err.splitlines()) == 1
          and words.lower() in err.lower() and not made)
    if not ok:
      failures.append("%s: rc=%s made=%s stderr=%r" % (what, proc.returncode, sorted(made), err[-400:]))
  assert not failures, "\n".join(failures)


def test_existing_output_not_overwritten(phai_solve, weights, tmp_path):
  with open(str(tmp_path / "good.hkl"), "w") as f:
    f.write(_good_hkl_text())
  with open(str(tmp_path / "out.json"), "w") as f:
    f.write("{}")
  w = ["model.weights=%s" % weights[0]] if weights[0] else []
  proc = run_solve(phai_solve, ["good.hkl", CELL, SG, "output.prefix=out"] + w, tmp_path)
  assert proc.returncode != 0 and "output.overwrite=True" in proc.stderr
  assert open(str(tmp_path / "out.json")).read() == "{}"
  assert sorted(os.listdir(str(tmp_path))) == ["good.hkl", "out.json"]
  proc = run_solve(phai_solve, ["good.hkl", CELL, SG, "output.prefix=out",
                                "output.overwrite=True",
                                "phasing.atom_search.guess_composition=False"] + w + PHASING,
                   tmp_path)
  assert proc.returncode == 0, proc.stderr[-1000:]
  assert json.load(open(str(tmp_path / "out.json")))["verdict"]
  # A model file of an earlier run stops the run too, before any work.
  for name in os.listdir(str(tmp_path)):
    if name.startswith("out"):
      os.remove(str(tmp_path / name))
  with open(str(tmp_path / "out.res"), "w") as f:
    f.write("TITL refined by hand\n")
  proc = run_solve(phai_solve, ["good.hkl", CELL, SG, "output.prefix=out"] + w, tmp_path)
  assert proc.returncode != 0 and "out.res already exists" in proc.stderr
  assert sorted(os.listdir(str(tmp_path))) == ["good.hkl", "out.res"]


def test_show_defaults_and_help(phai_solve, tmp_path):
  proc = run_solve(phai_solve, ["--show-defaults"], tmp_path)
  assert proc.returncode == 0
  for words in ("reflection_file", "weights", "trials", "cycles", "random_seed",
                "prefix", "overwrite", "build_model", "elements", "map_type",
                "wavelength"):
    assert words in proc.stdout
  proc = run_solve(phai_solve, ["--help"], tmp_path)
  assert proc.returncode == 0 and "phai.solve" in proc.stdout


def test_a_mineral_given_its_formula_without_z(phai_solve, tmp_path):
  """Cryolite (Na3AlF6, P2_1/n) at 2.0 A, calculated from its refined
  structure, as a SHELX .hkl with the formula and no Z: Z = 2 from the cell
  volume (Z = 1 would put 3 Na in the cell), the atom search solves it, and
  the starting model is its atom model: Al and one Na on inversion centres,
  ZERR 2, UNIT Na6 Al2 F12."""
  xs = _structure(shared_path("structures", "p21c_small", "BobHanson_Cryolite.cif"))
  f_calc = xs.structure_factors(d_min=2.0, algorithm="direct").f_calc()
  i_obs = abs(f_calc).f_as_f_sq().set_observation_type_xray_intensity()
  i_obs = i_obs.customized_copy(sigmas=i_obs.data() * 0.01 + 0.1)
  hkl = str(tmp_path / "cryolite.hkl")
  with open(hkl, "w") as f:
    i_obs.export_as_shelx_hklf(f)
  cell = " ".join("%.4f" % x for x in xs.unit_cell().parameters())
  proc = run_solve(phai_solve, [
    hkl, "unit_cell=" + cell, "space_group=P 1 21/n 1", "elements=Na3AlF6",
    "phasing.method=dual_space", "phasing.dual_space.more_starts=0",
    "output.prefix=out"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  log = open(str(tmp_path / "out.log")).read()
  assert "the formula times Z = 2 (Z not given: estimated from the cell volume" in log
  summary = json.load(open(str(tmp_path / "out.json")))
  assert summary["verdict"] == "solved" and summary["chosen"].startswith("atom model")
  assert summary["model_building"]["source"] == "atom model"
  res = open(str(tmp_path / "out.res")).read()
  assert "ZERR 2 " in res and "UNIT 6 2 12" in res
  centred = sorted(line.split()[0][:2] for line in res.splitlines()
                   if " 10.50000 " in line)
  assert centred == ["Al", "Na"]
