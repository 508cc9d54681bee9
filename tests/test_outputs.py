"""Tests of phai_cctbx.outputs: files read back with iotbx, all or nothing."""
import json
import os

import numpy as np
import pytest

from cctbx.array_family import flex
from libtbx.utils import Sorry

from phai_cctbx import outputs, phasing, solve as solve_module

from test_solve import KnowsTheAnswer, _data, _true_signs


@pytest.fixture(scope="module")
def result():
  mp = pytest.MonkeyPatch()
  xs, fc, obs = _data("P 1 21/n 1", (6.4, 7.2, 8.1, 90, 98, 90))
  mp.setattr(phasing, "phase_reflection_set", KnowsTheAnswer(_true_signs(xs)))
  try:
    yield solve_module.solve(obs, model=object(), trials=2, cycles=2, method="network")
  finally:
    mp.undo()


def test_write_all_and_read_back(result, tmp_path):
  prefix = str(tmp_path / "out")
  files = outputs.write_all(result, prefix, log_text="a log\n")
  for s in (".mtz", ".fcf", ".ccp4", ".json", ".log", "_extended.mtz"):
    assert prefix + s in files and os.path.isfile(prefix + s)
  assert not [f for f in os.listdir(str(tmp_path)) if ".part" in f]

  from iotbx import mtz
  m = mtz.object(prefix + ".mtz")
  types = {c.label(): c.type() for c in m.columns()}
  for label, t in (("FP", "F"), ("SIGFP", "Q"), ("PHIB", "P"), ("FOM", "W"),
                   ("FWT", "F"), ("PHWT", "P")):
    assert types[label] == t
  assert "PHI_EXT" not in types
  assert str(m.space_group_info()) == "P 1 21/n 1"
  arrays = {a.info().label_string(): a for a in m.as_miller_arrays()}
  assert arrays["FP,SIGFP"].size() == result.f_obs.size()
  assert arrays["PHIB"].size() == result.phases.size()

  ext = mtz.object(prefix + "_extended.mtz")
  assert {c.label() for c in ext.columns()} >= {"PHI_EXT", "FOM_EXT"}

  import iotbx.cif
  cif = iotbx.cif.reader(file_path=prefix + ".fcf").model()
  block = list(cif.values())[0]
  assert block["_shelx_refln_list_code"] == "3"
  assert list(block.get_loop("_refln").keys())[3:] == [
    "_refln_F_meas", "_refln_F_sigma", "_refln_A_calc", "_refln_B_calc"]
  a = np.array([float(x) for x in block["_refln_A_calc"]])
  b = np.array([float(x) for x in block["_refln_B_calc"]])
  fo = np.array([float(x) for x in block["_refln_F_meas"]])
  assert len(a) == result.phased.size()
  assert np.allclose(np.hypot(a, b), 0.8 * fo, atol=0.02)

  from iotbx import mrcfile
  mp = mrcfile.map_reader(file_name=prefix + ".ccp4")
  assert mp.unit_cell().is_similar_to(result.f_obs.unit_cell())
  data = mp.map_data()
  assert abs(flex.mean(data)) < 1e-3 and abs(data.as_1d().standard_deviation_of_the_sample() - 1) < 1e-2

  summary = json.load(open(prefix + ".json"))
  assert summary["verdict"] == result.verdict
  assert summary["files"]["mtz"] == prefix + ".mtz"


def test_extension_in_main_mtz_on_request(result, tmp_path):
  prefix = str(tmp_path / "ext")
  outputs.write_all(result, prefix, include_extended=True)
  from iotbx import mtz
  m = mtz.object(prefix + ".mtz")
  labels = [c.label() for c in m.columns()]
  assert "PHI_EXT" in labels and "FOM_EXT" in labels
  assert m.n_reflections() == result.f_obs.size() + result.extended.size()


def test_no_overwrite(result, tmp_path):
  prefix = str(tmp_path / "out")
  open(prefix + ".json", "w").write("{}")
  with pytest.raises(Sorry) as e:
    outputs.write_all(result, prefix)
  assert "output.overwrite=True" in str(e.value)
  assert sorted(os.listdir(str(tmp_path))) == ["out.json"]
  outputs.write_all(result, prefix, overwrite=True)
  assert json.load(open(prefix + ".json"))["verdict"] == result.verdict


def test_nothing_half_written(result, tmp_path, monkeypatch):
  def broken(*args, **kw):
    raise RuntimeError("disk full")
  monkeypatch.setattr(outputs, "write_map", broken)
  with pytest.raises(RuntimeError):
    outputs.write_all(result, str(tmp_path / "out"))
  assert os.listdir(str(tmp_path)) == []


def test_missing_output_folder(result, tmp_path):
  with pytest.raises(Sorry) as e:
    outputs.write_all(result, str(tmp_path / "no" / "out"))
  assert "does not exist" in str(e.value)


def test_model_files_of_an_earlier_run_removed_with_overwrite(result, tmp_path):
  """A run that places no atoms leaves no .res of an earlier run behind
  (with overwrite; without it, files it does not write are never touched)."""
  from phai_cctbx import starting_model
  suffixes = starting_model.MODEL_SUFFIXES
  result.model_building = starting_model.ModelBuilding(
    None, None, skipped="no atoms placed")
  try:
    for overwrite in (False, True):
      prefix = str(tmp_path / ("out_%s" % overwrite))
      for s in suffixes:
        with open(prefix + s, "w") as f:
          f.write("earlier run\n")
      files = outputs.write_all(result, prefix, overwrite=overwrite,
                                remove_stale=suffixes)
      assert prefix + ".mtz" in files
      left = [s for s in suffixes if os.path.exists(prefix + s)]
      assert left == ([] if overwrite else list(suffixes))
  finally:
    result.model_building = None
  json_mb = json.load(open(prefix + ".json"))["model_building"]
  assert json_mb["files_written"] is False and json_mb["skipped"] == "no atoms placed"


def test_many_maps_in_one_process(result, tmp_path):
  """cctbx's as_ccp4_map grows its default label list at every call and
  asserts its length: a process writing many maps must not fail."""
  import iotbx.mrcfile
  for i in range(12):
    outputs.write_map(result, str(tmp_path / ("m%d.ccp4" % i)))
  m = iotbx.mrcfile.map_reader(file_name=str(tmp_path / "m11.ccp4"))
  assert m.map_data().size() > 0
  assert any("phai.solve" in l for l in m.labels)
