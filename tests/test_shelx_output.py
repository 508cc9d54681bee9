"""SHELX .res/.hkl and model CIF files read back with iotbx.

shelxl is not available here; every written .res is parsed back with
iotbx.shelx (``xray.structure.from_shelx``) and checked for space group,
setting, cell, atoms and site occupation factors; the .hkl is read back as
HKLF 4 and the CIF through iotbx.cif.
"""
import os

import pytest

import phai_cctbx  # noqa: F401  (cctbx before torch)
import iotbx.cif
import iotbx.shelx
from cctbx import crystal, miller, sgtbx, xray
from cctbx.array_family import flex
from iotbx.reflection_file_reader import any_reflection_file
from iotbx.shelx import crystal_symmetry_from_ins
from libtbx.utils import Sorry

from phai_cctbx.model_building import (
  StartingModel, build_starting_model, parse_elements)
from phai_cctbx.shelx_output import (
  res_lines, write_hkl, write_model_cif, write_res)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRUCTURES = os.path.join(ROOT, os.pardir, "shared", "data", "structures")
needs_data = pytest.mark.skipif(
  not os.path.isdir(STRUCTURES), reason="../shared/data not present")


def synthetic_model(symbol, sites, composition=None):
  """A model built directly (no map), for writer tests without data."""
  cs = crystal.symmetry(
    unit_cell=sgtbx.space_group_info(symbol).any_compatible_unit_cell(
      volume=600), space_group_symbol=symbol)
  xs = xray.structure(crystal.special_position_settings(cs))
  for label, element, site in sites:
    xs.add_scatterer(xray.scatterer(
      label=label, site=site, u=0.05, scattering_type=element))
  from phai_cctbx.model_building import PeakAtom
  atoms = [PeakAtom(sc.label, sc.scattering_type, sc.site, 5.0, 1.0,
                    sc.multiplicity(), 0) for sc in xs.scatterers()]
  return StartingModel(xs, atoms, [[a.label for a in atoms]], [], "E", 5.0,
                       parse_elements(composition) if composition else None)


def read_back(path):
  return xray.structure.from_shelx(filename=path)


def assert_round_trip(model, path):
  xs = model.xray_structure
  back = read_back(path)
  assert back.space_group() == xs.space_group()
  assert back.unit_cell().is_similar_to(xs.unit_cell(), 1e-4, 1e-3)
  assert back.scatterers().size() == xs.scatterers().size()
  for a, b in zip(xs.scatterers(), back.scatterers()):
    assert a.label.upper() == b.label.upper()   # SHELX names ignore case
    assert a.scattering_type.upper() == b.scattering_type.upper()
    assert xs.unit_cell().distance(a.site, b.site) < 1e-4
    assert abs(a.u_iso - b.u_iso) < 1e-5
    assert abs(a.occupancy - b.occupancy) < 1e-5
  cs = crystal_symmetry_from_ins.extract_from(path)
  assert cs.space_group() == xs.space_group()


@pytest.mark.parametrize("symbol", [
  "P 1 21/c 1", "P 1 21/n 1", "P 1 21/a 1", "C 1 2/c 1", "P b c a",
  "P n m a", "C 1 2/m 1"])
def test_res_round_trip_in_each_setting(tmp_path, symbol):
  model = synthetic_model(symbol, [
    ("C1", "C", (0.1, 0.2, 0.3)), ("C2", "C", (0.2, 0.22, 0.35)),
    ("O1", "O", (0.15, 0.31, 0.41)), ("S1", "S", (0.31, 0.12, 0.11))])
  path = str(tmp_path / "m.res")
  write_res(model, path, title="test model")
  assert_round_trip(model, path)
  text = open(path).read().splitlines()
  assert text[0].startswith("TITL test model")
  keys = [l.split()[0] for l in text if l.strip()]
  for key in ("CELL", "ZERR", "LATT", "SFAC", "UNIT", "HKLF", "END"):
    assert key in keys
  assert keys[-2:] == ["HKLF", "END"]
  assert keys.index("SFAC") < keys.index("UNIT") < keys.index("C1")
  sfac = [l for l in text if l.startswith("SFAC")][0].split()[1:]
  assert sfac[:2] == ["C", "H"]          # hydrogens counted for HFIX later
  unit = [l for l in text if l.startswith("UNIT")][0].split()[1:]
  assert len(unit) == len(sfac)
  n_sym = sgtbx.space_group_info(symbol).group().order_z()
  assert int(unit[sfac.index("S")]) == n_sym


def test_special_position_sof(tmp_path):
  model = synthetic_model("P 1 21/c 1", [
    ("Cu1", "Cu", (0.0, 0.0, 0.0)), ("O1", "O", (0.1, 0.15, 0.2))])
  path = str(tmp_path / "m.res")
  write_res(model, path)
  lines = dict((l.split()[0], l.split()) for l in open(path)
               if l[:2] in ("Cu", "O1"))
  assert float(lines["Cu1"][5]) == pytest.approx(10.5)
  assert float(lines["O1"][5]) == pytest.approx(11.0)
  back = read_back(path)
  assert back.scatterers()[0].multiplicity() == 2
  unit = [l for l in open(path) if l.startswith("UNIT")][0].split()[1:]
  sfac = [l for l in open(path) if l.startswith("SFAC")][0].split()[1:]
  assert int(unit[sfac.index("Cu")]) == 2


def test_formula_hydrogens_and_no_hydrogen(tmp_path):
  sites = [("C%d" % i, "C", (0.05 * i, 0.1, 0.2 + 0.03 * i))
           for i in range(1, 7)]
  m = synthetic_model("P 1 21/c 1", sites, "C6 H5 N O2")
  lines = res_lines(m)
  sfac = [l for l in lines if l.startswith("SFAC")][0].split()[1:]
  unit = [l for l in lines if l.startswith("UNIT")][0].split()[1:]
  assert sfac == ["C", "H"]
  # 24 C found in the cell for a formula with 9 non-H atoms and 5 H.
  assert unit == ["24", "%d" % round(5 * 24 / 9.0)]
  m = synthetic_model("P 1 21/c 1", sites, "C O")
  sfac = [l for l in res_lines(m) if l.startswith("SFAC")][0].split()[1:]
  assert sfac == ["C"]


def test_not_origin_centric_setting_is_refused():
  cs = crystal.symmetry(unit_cell=(5, 6, 7, 90, 100, 90),
                        space_group_symbol="P 1 21/c 1")
  shifted = cs.change_basis(sgtbx.change_of_basis_op("x+1/8,y,z"))
  xs = xray.structure(crystal.special_position_settings(shifted))
  xs.add_scatterer(xray.scatterer("C1", (0.1, 0.2, 0.3), 0.05))
  model = StartingModel(xs, [], [], [], "E", 1.0, None)
  with pytest.raises(Sorry):
    res_lines(model)


def test_hkl_from_amplitudes_and_intensities(tmp_path):
  cs = crystal.symmetry(unit_cell=(5, 6, 7, 90, 100, 90),
                        space_group_symbol="P 1 21/c 1")
  ms = miller.build_set(cs, anomalous_flag=False, d_min=1.5)
  rng = flex.mersenne_twister(seed=1)
  f = ms.array(data=rng.random_double(ms.size()) * 50 + 1,
               sigmas=rng.random_double(ms.size()) + 0.5)
  f.set_observation_type_xray_amplitude()
  path = str(tmp_path / "a.hkl")
  scale = write_hkl(f, path)
  back = any_reflection_file(path + "=hklf4").as_miller_arrays(
    crystal_symmetry=cs)[0]
  assert back.is_xray_intensity_array()
  assert back.size() == f.size()
  i_obs = f.f_as_f_sq()
  back, i_obs = back.common_sets(i_obs)
  assert flex.max(flex.abs(back.data() - i_obs.data() * scale)) < 0.01
  rel = back.sigmas() / (i_obs.sigmas() * scale)
  assert flex.min(rel) > 0.99 and flex.max(rel) < 1.01
  assert open(path).read().splitlines()[-1].split()[:3] == ["0", "0", "0"]
  # Huge intensities are rescaled to fit F8.2.
  big = i_obs.customized_copy(data=i_obs.data() * 1e6,
                              sigmas=i_obs.sigmas() * 1e6)
  scale = write_hkl(big, path)
  assert scale < 1
  for line in open(path):
    assert len(line.rstrip("\n")) == 28
  with pytest.raises(Sorry):
    write_hkl(f.customized_copy(data=flex.complex_double(f.size()),
                                sigmas=None), path)


def test_model_cif_round_trip(tmp_path):
  model = synthetic_model("P 1 21/n 1", [
    ("C1", "C", (0.1, 0.2, 0.3)), ("N1", "N", (0.2, 0.22, 0.35)),
    ("Cl1", "Cl", (0.31, 0.12, 0.11))])
  path = str(tmp_path / "m.cif")
  write_model_cif(model, path)
  back = list(iotbx.cif.reader(file_path=path)
              .build_crystal_structures().values())[0]
  assert back.space_group() == model.xray_structure.space_group()
  assert [sc.label for sc in back.scatterers()] == ["C1", "N1", "Cl1"]
  assert [sc.scattering_type for sc in back.scatterers()] == ["C", "N", "Cl"]
  for a, b in zip(model.xray_structure.scatterers(), back.scatterers()):
    assert model.xray_structure.unit_cell().distance(a.site, b.site) < 1e-4


@needs_data
@pytest.mark.parametrize("name,d_min,elements", [
  ("p21c_large/MaterSim_LUFHAW.cif", 1.0, None),
  ("p21c_large/dwiddo_ACSALA01.cif", 1.0, "C9 H8 O4"),
  ("supergroups/cod-developers_2100348-benzene.cif", 1.0, "C H"),
  ("p21c_small/BobHanson_Cryolite.cif", 1.0, "Na Al F"),
  ("p21c_large/cod-developers_2008520.cif", 2.0, None),
])
def test_written_files_from_real_structures(tmp_path, name, d_min, elements):
  xs = list(iotbx.cif.reader(file_path=os.path.join(STRUCTURES, name))
            .build_crystal_structures().values())[0]
  fc = xs.structure_factors(d_min=d_min, algorithm="direct").f_calc()
  f = abs(fc)
  f.set_observation_type_xray_amplitude()
  model = build_starting_model(f, fc.phases(deg=True), elements=elements)
  assert not model.is_empty()
  prefix = str(tmp_path / "sol")
  write_res(model, prefix + ".res", title=name)
  write_hkl(f, prefix + ".hkl")
  write_model_cif(model, prefix + "_model.cif")
  assert_round_trip(model, prefix + ".res")
  back = read_back(prefix + ".res")
  assert back.crystal_symmetry().is_similar_symmetry(f.crystal_symmetry())
  hkl = any_reflection_file(prefix + ".hkl=hklf4").as_miller_arrays(
    crystal_symmetry=back)[0]
  assert hkl.size() == f.size()
  cif_xs = list(iotbx.cif.reader(file_path=prefix + "_model.cif")
                .build_crystal_structures().values())[0]
  assert cif_xs.scatterers().size() == model.xray_structure.scatterers().size()


def test_empty_model_is_refused(tmp_path):
  cs = crystal.symmetry(unit_cell=(5, 6, 7, 90, 100, 90),
                        space_group_symbol="P 1 21/c 1")
  model = StartingModel(xray.structure(crystal.special_position_settings(cs)),
                        [], [], ["no clear peaks"], "E", None, None)
  with pytest.raises(Sorry):
    write_res(model, str(tmp_path / "e.res"))
