"""Tests of phai_cctbx.data_input: formats, symmetry sources, bad input."""
import os

import pytest

from cctbx import crystal, miller
from cctbx.array_family import flex
from libtbx.utils import Sorry

from phai_cctbx import data_input

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      os.pardir, "shared", "data", "experimental")
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED),
                                  reason="shared development data not present")
CELL = "6.1 7.2 8.3 90 104 90"
SG = "P 1 21/c 1"
GOOD = ("   1   0   0   10.00    1.00\n"
        "   0   2   0  100.00    2.00\n"
        "   1   1   1   -0.50    0.40\n"
        "  -1   1   1   50.00    1.00\n"
        "   1   1   1    0.70    0.30\n"
        "   0   0   0    0.00    0.00\n")


def _write(tmp_path, name, text, mode="w"):
  p = tmp_path / name
  with open(p, mode) as f:
    f.write(text)
  return str(p)


def test_shelx_hkl_with_parameters(tmp_path):
  fn = _write(tmp_path, "d.hkl", GOOD)
  r = data_input.read_data(fn, unit_cell=CELL, space_group=SG)
  assert r.file_format == "shelx" and r.is_intensities
  assert r.miller_array.size() == 5
  assert r.symmetry_sources["unit cell"] == "the unit_cell parameter"
  assert str(r.crystal_symmetry.space_group_info()) == SG
  assert r.describe()


def test_hklf3_amplitudes(tmp_path):
  fn = _write(tmp_path, "d.hkl", GOOD)
  r = data_input.read_data(fn, unit_cell=CELL, space_group=SG, hklf=3)
  assert r.miller_array.is_xray_amplitude_array()


def test_symmetry_from_ins_and_hklf_code(tmp_path):
  fn = _write(tmp_path, "d.hkl", GOOD)
  ins = _write(tmp_path, "d.ins", "TITL x\nCELL 0.71073 6.1 7.2 8.3 90 104 90\n"
               "ZERR 4 0 0 0 0 0 0\nLATT 1\nSYMM -X, 1/2+Y, 1/2-Z\nSFAC C\n"
               "UNIT 8\nHKLF 3\nEND\n")
  r = data_input.read_data(fn, symmetry_file=ins)
  assert r.miller_array.is_xray_amplitude_array()
  assert r.crystal_symmetry.space_group_info().type().number() == 14
  # parameters take precedence over the file
  r = data_input.read_data(fn, symmetry_file=ins, space_group="P 1 21/n 1")
  assert str(r.crystal_symmetry.space_group_info()) == "P 1 21/n 1"


def test_negative_sigma_skipped(tmp_path):
  fn = _write(tmp_path, "d.hkl", GOOD.replace("   0.70    0.30", "  -1.00   -1.00"))
  r = data_input.read_data(fn, unit_cell=CELL, space_group=SG)
  assert r.miller_array.size() == 4
  assert "negative sigma" in r.notes[0]


def test_mtz_labels(tmp_path):
  cs = crystal.symmetry(unit_cell=CELL, space_group_symbol=SG)
  ms = miller.build_set(cs, anomalous_flag=False, d_min=2)
  i = ms.array(data=flex.double(ms.size(), 5.0), sigmas=flex.double(ms.size(), 1.0))
  i.set_observation_type_xray_intensity()
  f = ms.array(data=flex.double(ms.size(), 2.0), sigmas=flex.double(ms.size(), 0.5))
  f.set_observation_type_xray_amplitude()
  ds = i.as_mtz_dataset(column_root_label="I")
  ds.add_miller_array(f, column_root_label="FP")
  fn = str(tmp_path / "d.mtz")
  ds.mtz_object().write(fn)
  r = data_input.read_data(fn)
  assert r.file_format == "mtz" and r.is_intensities
  r = data_input.read_data(fn, labels="FP,SIGFP")
  assert r.miller_array.is_xray_amplitude_array()
  with pytest.raises(Sorry) as e:
    data_input.read_data(fn, labels="FOBS")
  assert "labels" in str(e.value) and "FP,SIGFP" in str(e.value)


def test_refln_cif(tmp_path):
  cs = crystal.symmetry(unit_cell=CELL, space_group_symbol=SG)
  ms = miller.build_set(cs, anomalous_flag=False, d_min=2)
  i = ms.array(data=flex.double(ms.size(), 5.0), sigmas=flex.double(ms.size(), 1.0))
  i.set_observation_type_xray_intensity()
  import iotbx.cif
  block = iotbx.cif.miller_arrays_as_cif_block(i, array_type="meas").cif_block
  block.update(cs.as_cif_block())
  fn = str(tmp_path / "d.cif")
  with open(fn, "w") as f:
    print(iotbx.cif.model.cif({"d": block}), file=f)
  r = data_input.read_data(fn)
  assert r.file_format == "cif" and r.is_intensities
  assert r.miller_array.size() == ms.size()
  assert r.crystal_symmetry.is_similar_symmetry(cs)


@pytest.mark.parametrize("text,words", [
  (GOOD.replace("   1   1   1   -0.50    0.40", "   1   1"), "truncated"),
  (GOOD.replace("   1   1   1   -0.50    0.40", "   1   1   1    abcd    0.40"), "non-numeric"),
  (GOOD.replace("   1   1   1   -0.50    0.40", "  xx  yy  zz    1.00    0.40"), "non-numeric"),
  (GOOD.replace("   1   1   1   -0.50    0.40", "   1   1   1     nan    0.40"), "NaN"),
  (GOOD.replace("   1   1   1   -0.50    0.40", "   1   1   1    -inf    0.40"), "NaN"),
  ("   0   0   0    0.00    0.00\n", "no reflections"),
  ("   1   0   0   -1.00    1.00\n   0   1   0    0.00    1.00\n", "only zero or negative"),
])
def test_bad_hkl(tmp_path, text, words):
  fn = _write(tmp_path, "bad.hkl", text)
  with pytest.raises(Sorry) as e:
    data_input.read_data(fn, unit_cell=CELL, space_group=SG)
  assert words in str(e.value)
  assert "\n" not in str(e.value)


def test_missing_and_empty_files(tmp_path):
  with pytest.raises(Sorry) as e:
    data_input.read_data(str(tmp_path / "none.hkl"))
  assert "not found" in str(e.value)
  fn = _write(tmp_path, "empty.hkl", "")
  with pytest.raises(Sorry) as e:
    data_input.read_data(fn, unit_cell=CELL, space_group=SG)
  assert "empty" in str(e.value)


def test_no_symmetry(tmp_path):
  fn = _write(tmp_path, "d.hkl", GOOD)
  with pytest.raises(Sorry) as e:
    data_input.read_data(fn)
  assert "unit_cell=" in str(e.value) and "space_group=" in str(e.value)
  with pytest.raises(Sorry) as e:
    data_input.read_data(fn, unit_cell=CELL)
  assert "space_group=" in str(e.value)
  with pytest.raises(Sorry) as e:
    data_input.read_data(fn, space_group=SG)
  assert "unit_cell=" in str(e.value)


def test_bad_parameters(tmp_path):
  fn = _write(tmp_path, "d.hkl", GOOD)
  with pytest.raises(Sorry):
    data_input.read_data(fn, unit_cell="1 2", space_group=SG)
  with pytest.raises(Sorry):
    data_input.read_data(fn, unit_cell=CELL, space_group="Q 99")
  with pytest.raises(Sorry) as e:
    data_input.read_data(fn, unit_cell="6 7 8 80 104 90", space_group=SG)
  assert "not compatible" in str(e.value)


@needs_shared
@pytest.mark.parametrize("args,n,kind,number", [
  (dict(file_name="epoxide_P21n/epoxide.hkl", symmetry_file="epoxide_P21n/epoxide.cif"), 2081, "I", 14),
  (dict(file_name="cod2016452_P21c/2016452.hkl"), 1045, "I", 14),
  (dict(file_name="serine_P21c/Serin.cif"), 5136, "I", 14),
  (dict(file_name="HMa_Mg_P21c/iam.cif"), 12589, "I", 14),
  (dict(file_name="p-1_a_P-1/p-1_a.cif"), 963, "I", 2),
  (dict(file_name="phai_notebook/COD_2016452.hkl", hklf=3,
        unit_cell="9.748 8.89 7.566 90 112.74 90", space_group="P 1 21/c 1"), 189, "F", 14),
])
def test_shared_files(args, n, kind, number):
  args = dict(args)
  for key in ("file_name", "symmetry_file"):
    if key in args:
      args[key] = os.path.join(SHARED, args[key])
  r = data_input.read_data(**args)
  assert r.miller_array.size() == n
  assert r.is_intensities == (kind == "I")
  assert r.crystal_symmetry.space_group_info().type().number() == number
