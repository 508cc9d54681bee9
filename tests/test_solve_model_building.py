"""phai.solve's model-building step with true phases: atoms really written.

The phases come from a structure of ../shared/data/structures (cctbx f_calc),
either directly (the step alone) or through the whole program with the
network replaced by a stand-in that returns the true signs on its reflection
list.  The written .res/.ins are read back with iotbx.shelx and matched to
the true non-hydrogen atoms with emma; the .hkl is read back as HKLF 4 and
compared with the data given; the model CIF is read back with iotbx.cif.
"""
import io
import json
import os

import pytest

import phai_cctbx  # noqa: F401  (cctbx before torch)
import iotbx.cif
from cctbx import euclidean_model_matching as emma
from cctbx import xray
from cctbx.array_family import flex
from iotbx.reflection_file_reader import any_reflection_file

from phai_cctbx import phasing, starting_model

from test_solve import KnowsTheAnswer, _true_signs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRUCTURES = os.path.join(ROOT, os.pardir, "shared", "data", "structures")
GLYCINE = os.path.join(STRUCTURES, "p21c_small", "dwiddo_GLYCIN75.cif")
ASPIRIN = os.path.join(STRUCTURES, "p21c_large", "dwiddo_ACSALA01.cif")

needs_data = pytest.mark.skipif(
  not os.path.isfile(GLYCINE), reason="../shared/data not present")


def _structure(path=GLYCINE):
  xs = list(iotbx.cif.reader(file_path=path).build_crystal_structures().values())[0]
  for sc in xs.scatterers():
    sc.scattering_type = sc.scattering_type.rstrip("+-0123456789")
  return xs


def _intensities(xs, d_min=1.0):
  """I, sigma(I) from the structure, and its true phases (degrees)."""
  fc = xs.structure_factors(d_min=d_min, algorithm="direct").f_calc()
  i = abs(fc).f_as_f_sq()
  i = i.customized_copy(data=i.data() * (5000.0 / flex.max(i.data())))
  i = i.customized_copy(sigmas=i.data() * 0.02 + 0.5)
  i.set_observation_type_xray_intensity()
  return i, fc.phases(deg=True)


def _matches(xs_true, xs_model, tolerance=0.3):
  """(atoms matched within tolerance, elements right, non-H atoms of the truth)."""
  ref = xs_true.select(~xs_true.hd_selection())
  mm = emma.model_matches(ref.as_emma_model(), xs_model.as_emma_model(),
                          tolerance=tolerance, rms_penalty_per_site=0)
  if mm.n_matches() == 0:
    return 0, 0, ref.scatterers().size()
  pairs = mm.refined_matches[0].pairs
  right = sum(1 for i, j in pairs
              if ref.scatterers()[i].scattering_type.upper()
              == xs_model.scatterers()[j].scattering_type.upper())
  return len(pairs), right, ref.scatterers().size()


def _read_hkl(file_name, crystal_symmetry):
  return any_reflection_file(file_name + "=hklf4").as_miller_arrays(
    crystal_symmetry=crystal_symmetry)[0]


def _write(step, prefix):
  names = []
  for suffix, writer in step.writers():
    writer(prefix + suffix)
    names.append(prefix + suffix)
  return names


@needs_data
def test_step_with_true_phases_writes_matching_model(tmp_path):
  xs = _structure()
  i_obs, phases = _intensities(xs)
  log = io.StringIO()
  step = starting_model.build(
    i_obs.f_sq_as_f(), phases, i_obs, elements="C2 H5 N O2", wavelength=1.54184,
    title="glycine", log=log)
  assert step.writes_files and step.skipped is None
  prefix = str(tmp_path / "gly")
  names = _write(step, prefix)
  assert [os.path.basename(n) for n in names] == [
    "gly.res", "gly.ins", "gly.hkl", "gly_model.cif"]

  # .res and .ins: the same text, read back by iotbx.shelx
  text = open(prefix + ".res").read()
  assert open(prefix + ".ins").read() == text
  assert text.startswith("TITL glycine")
  assert "CELL 1.54184 " in text and "HKLF 4" in text
  back = xray.structure.from_shelx(filename=prefix + ".res")
  assert back.space_group() == xs.space_group()
  assert back.unit_cell().is_similar_to(xs.unit_cell(), 1e-4, 1e-3)
  matched, right, n_true = _matches(xs, back)
  assert matched == n_true == 5 and right == n_true
  assert back.scatterers().size() == n_true

  # .hkl: the intensities given (scaled by at most a common factor)
  hkl = _read_hkl(prefix + ".hkl", xs)
  assert hkl.size() == i_obs.size() and hkl.is_xray_intensity_array()
  a, b = i_obs.common_sets(hkl)
  assert a.size() == i_obs.size()
  assert flex.linear_correlation(a.data(), b.data()).coefficient() > 0.9999

  # model CIF
  cif_xs = list(iotbx.cif.reader(file_path=prefix + "_model.cif")
                .build_crystal_structures().values())[0]
  assert cif_xs.scatterers().size() == back.scatterers().size()
  assert cif_xs.space_group() == xs.space_group()

  # the summary for the JSON and the log
  s = step.summary()
  json.dumps(s)
  assert s["built"] and s["files_written"] and s["n_atoms"] == len(s["atoms"])
  assert s["n_fragments"] == len(s["fragments"]) >= 1
  assert s["elements"] == "C2 H5 N1 O2"
  assert "Model files: %d atoms" % s["n_atoms"] in log.getvalue()


@needs_data
def test_step_amplitudes_written_as_intensities(tmp_path):
  xs = _structure()
  i_obs, phases = _intensities(xs)
  f_obs = i_obs.f_sq_as_f()
  step = starting_model.build(f_obs, phases, f_obs)
  prefix = str(tmp_path / "f")
  _write(step, prefix)
  hkl = _read_hkl(prefix + ".hkl", xs)
  a, b = i_obs.common_sets(hkl)
  assert flex.linear_correlation(a.data(), b.data()).coefficient() > 0.999


@needs_data
def test_step_without_clear_peaks_writes_nothing(tmp_path):
  import random
  xs = _structure(ASPIRIN)
  i_obs, phases = _intensities(xs)
  rng = random.Random(3)
  wrong = phases.customized_copy(
    data=flex.double([rng.choice((0.0, 180.0)) for _ in range(phases.size())]))
  log = io.StringIO()
  step = starting_model.build(i_obs, wrong, i_obs, log=log)
  assert not step.writes_files and step.writers() == [] and step.suffixes() == ()
  s = step.summary()
  assert s["files_written"] is False and s["n_atoms"] == 0 and s["warnings"]
  assert "WARNING" in log.getvalue() and "No model files written" in log.getvalue()


def _small_network(path):
  import torch
  from phai_cctbx.model import PhAIConfig, PhAINet
  from phai_cctbx.weights import save_weights
  torch.manual_seed(0)
  net = PhAINet(PhAIConfig(filters=4, cnn_depth=1, dim=16, dim_exp=16,
                           dim_token_exp=8, mlp_depth=1))
  save_weights(path, net, "max", {"note": "untrained, for tests"})


def _run_program(args):
  from iotbx.cli_parser import run_program
  from phai_cctbx.programs.solve import Program, file_arguments_as_phil
  return run_program(program_class=Program, args=file_arguments_as_phil(args),
                     logger=io.StringIO())


@needs_data
def test_program_writes_the_model_of_true_signs(tmp_path, monkeypatch):
  """The whole program, the network's signs replaced by the true ones."""
  from iotbx.shelx.hklf import miller_array_export_as_shelx_hklf
  xs = _structure()
  i_obs, phases = _intensities(xs)
  hkl = str(tmp_path / "gly.hkl")
  with open(hkl, "w") as f:
    miller_array_export_as_shelx_hklf(i_obs, file_object=f)
  weights = str(tmp_path / "small.pt")
  _small_network(weights)
  monkeypatch.setattr(phasing, "phase_reflection_set", KnowsTheAnswer(_true_signs(xs)))
  # A model is written only for a verdict that supports it: the true signs do.
  import phai_cctbx.solve as solve_module
  original_solve = solve_module.solve

  def solve(*args, **kwds):
    result = original_solve(*args, **kwds)
    result.verdict = "solved"
    return result

  monkeypatch.setattr(solve_module, "solve", solve)
  prefix = str(tmp_path / "out")
  cell = " ".join("%.5f" % x for x in xs.unit_cell().parameters())
  summary = _run_program([
    hkl, "unit_cell=" + cell, "space_group=%s" % xs.space_group_info(),
    "model.weights=" + weights, "phasing.trials=2", "phasing.cycles=2",
    "elements=C2 H5 N O2", "output.prefix=" + prefix])
  for s in (".mtz", ".fcf", ".ccp4", ".json", ".log", ".res", ".ins", ".hkl",
            "_model.cif"):
    assert os.path.isfile(prefix + s), s
  mb = json.load(open(prefix + ".json"))["model_building"]
  assert mb == json.loads(json.dumps(summary["model_building"]))
  assert mb["files_written"] and mb["n_atoms"] >= 5
  back = xray.structure.from_shelx(filename=prefix + ".res")
  matched, right, n_true = _matches(xs, back)
  assert matched == n_true == 5 and right == n_true
  assert back.scatterers().size() == mb["n_atoms"]
  data = _read_hkl(prefix + ".hkl", xs)
  a, b = i_obs.common_sets(data)
  assert a.size() == data.size() == i_obs.size()
  assert flex.linear_correlation(a.data(), b.data()).coefficient() > 0.9999
  log = open(prefix + ".log").read()
  assert "Starting model from the E-map" in log and "elements: C2 H5 N1 O2" in log
  assert ", ".join(prefix + s for s in (".res", ".ins", ".hkl", "_model.cif")) in log

  # Again with overwrite, from the F-map; then phases only: the model files,
  # not part of that run, are left alone.
  args = [hkl, "unit_cell=" + cell, "space_group=%s" % xs.space_group_info(),
          "model.weights=" + weights, "phasing.trials=2", "phasing.cycles=2",
          "output.prefix=" + prefix, "output.overwrite=True"]
  _run_program(args + ["model_building.map_type=F"])
  assert "Starting model from the F-map" in open(prefix + ".log").read()
  res = open(prefix + ".res").read()
  summary = _run_program(args + ["build_model=False"])
  assert summary["model_building"]["files_written"] is False
  assert summary["model_building"]["built"] is False
  assert "Starting model" not in open(prefix + ".log").read()
  assert open(prefix + ".res").read() == res
