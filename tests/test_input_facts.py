"""What the input files say besides reflections and symmetry: composition,
wavelength, Z and cell esds, read by phai_cctbx.data_input and carried into
the starting model's SHELX file by phai_cctbx.shelx_output."""
import io
import os

import pytest

import phai_cctbx  # noqa: F401  (cctbx before torch)
from cctbx import crystal, miller
from cctbx.array_family import flex
from libtbx.utils import Sorry

from phai_cctbx import data_input, model_building, starting_model
from phai_cctbx.shelx_output import res_lines

from test_shelx_output import synthetic_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "phai_cctbx", "examples")
EXPERIMENTAL = os.path.join(ROOT, os.pardir, "shared", "data", "experimental")
needs_data = pytest.mark.skipif(
  not os.path.isdir(EXPERIMENTAL), reason="../shared/data not present")

INS = """TITL test
CELL 1.54184 6.1 7.2 8.3 90 104 90
ZERR 4 0.001 0.002 0.003 0 0.05 0
LATT 1
SYMM -X, 1/2+Y, 1/2-Z
SFAC C H N O
UNIT 24 20 4 =
  8
L.S. 4
HKLF 4
END
"""


def _hkl(path):
  cs = crystal.symmetry((6.1, 7.2, 8.3, 90, 104, 90), "P 1 21/c 1")
  ms = miller.build_set(cs, anomalous_flag=False, d_min=1.2)
  i = ms.array(data=flex.double(ms.size(), 100.0), sigmas=flex.double(ms.size(), 1.0))
  i.set_observation_type_xray_intensity()
  with open(path, "w") as f:
    i.export_as_shelx_hklf(file_object=f)


def test_ins_composition_wavelength_zerr(tmp_path):
  facts = data_input.facts_from_ins_text(INS, "x.ins")
  c = facts.composition
  assert c.symbols == ("C", "H", "N", "O") and c.per_cell
  assert c.counts == {"C": 24, "H": 20, "N": 4, "O": 8}   # '=' continuation
  assert "x.ins (SFAC/UNIT)" == c.source
  assert facts.wavelength == 1.54184 and facts.z == 4
  assert facts.cell_esds == (0.001, 0.002, 0.003, 0, 0.05, 0)


def test_sfac_long_form_and_upper_case_labels():
  text = ("CELL 0.71073 5 6 7 90 90 90\nSFAC C H\n"
          "SFAC NA 4.7626 3.2850 3.1736 8.8422 1.2674 0.3136 1.1128 129.424 "
          "0.6760 0.0 0.0 0.0 0.0 0.0 0.0\nUNIT 20 56 4\n")
  c = data_input.facts_from_ins_text(text, "y.res").composition
  assert c.symbols == ("C", "H", "Na") and c.counts["Na"] == 4


def test_no_composition_and_bad_sfac_are_not_fatal():
  assert data_input.facts_from_ins_text("CELL 0.7 5 6 7 90 90 90\n", "a").composition is None
  facts = data_input.facts_from_ins_text("SFAC C Qq\nUNIT 1 1\n", "b.ins")
  assert facts.composition is None and "not an element" in facts.notes[0]


def test_read_data_with_ins_carries_the_facts(tmp_path):
  _hkl(str(tmp_path / "d.hkl"))
  (tmp_path / "d.ins").write_text(INS)
  data = data_input.read_data(str(tmp_path / "d.hkl"), symmetry_file=str(tmp_path / "d.ins"))
  assert str(data.composition) == "C24 H20 N4 O8" and data.composition.per_cell
  assert data.wavelength == 1.54184 and data.facts.z == 4
  text = "\n".join(data.describe())
  assert "composition C24 H20 N4 O8 (unit cell) from" in text and "(SFAC/UNIT)" in text
  assert "wavelength 1.5418 A from" in text


def test_mtz_history_composition_and_wavelength(tmp_path):
  cs = crystal.symmetry((6.1, 7.2, 8.3, 90, 104, 90), "P 1 21/c 1")
  ms = miller.build_set(cs, anomalous_flag=False, d_min=1.2)
  f = ms.array(data=flex.double(ms.size(), 3.0), sigmas=flex.double(ms.size(), 1.0))
  f.set_observation_type_xray_amplitude()
  ds = f.as_mtz_dataset(column_root_label="FP", wavelength=0.9)
  m = ds.mtz_object()
  m.add_history("phai test: elements=C6 H5 N O2")
  m.write(str(tmp_path / "d.mtz"))
  data = data_input.read_data(str(tmp_path / "d.mtz"))
  assert str(data.composition) == "C6 H5 N1 O2" and not data.composition.per_cell
  assert "history" in data.composition.source
  assert abs(data.wavelength - 0.9) < 1e-6


@needs_data
@pytest.mark.parametrize("args,formula,source,wavelength,z", [
  (("epoxide_P21n/epoxide.hkl", "epoxide_P21n/epoxide.cif"), "C8 H16 O4",
   "_chemical_formula_sum C2 H4 O, Z = 4", 0.71068, 4),
  (("CpNa_Pnma/iam.cif", None), "C20 H56 N12 Na4", "(SFAC/UNIT)", 0.71073, 4),
  (("cod2016452_P21c/2016452.hkl", "cod2016452_P21c/2016452.cif"), "C28 H28 O4",
   "_chemical_formula_sum C14 H14 O2", 0.71073, 2),
])
def test_shared_files(args, formula, source, wavelength, z):
  data = data_input.read_data(
    os.path.join(EXPERIMENTAL, args[0]),
    symmetry_file=os.path.join(EXPERIMENTAL, args[1]) if args[1] else None)
  assert str(data.composition) == formula and data.composition.per_cell
  assert source in data.composition.source
  assert data.wavelength == wavelength and data.facts.z == z
  assert data.facts.cell_esds is not None and any(e > 0 for e in data.facts.cell_esds)


@needs_data
def test_cif_atom_type_loop_without_formula(tmp_path):
  text = open(os.path.join(EXPERIMENTAL, "cod2016452_P21c", "2016452.cif")).read()
  text = text.replace("_chemical_formula_sum", "_chemical_formula_other")
  path = str(tmp_path / "types.cif")
  with open(path, "w") as f:
    f.write(text)
  facts = data_input.read_symmetry_file_facts(path)
  assert facts.composition.symbols == ("C", "H", "O")
  assert facts.composition.counts is None and "_atom_type" in facts.composition.source


# --- into the .res ------------------------------------------------------------

SITES = [("C%d" % i, "C", (0.05 * i, 0.1, 0.2 + 0.03 * i)) for i in range(1, 5)] + [
  ("O1", "O", (0.4, 0.3, 0.1))]


def _lines(model, **kw):
  notes = []
  lines = res_lines(model, notes=notes, **kw)
  return dict((l.split()[0], l) for l in lines if l.split()), notes


def test_res_carries_wavelength_zerr_and_unit_of_the_input():
  comp = data_input.facts_from_ins_text(INS, "x.ins").composition
  m = synthetic_model("P 1 21/c 1", SITES)
  m.composition = comp
  lines, notes = _lines(m, wavelength=1.54184, cell_esds=(0.001, 0.002, 0.003, 0, 0.05, 0), z=4)
  assert lines["CELL"].startswith("CELL 1.54184 ")
  assert lines["ZERR"].split() == ["ZERR", "4", "0.001", "0.002", "0.003", "0", "0.05", "0"]
  assert lines["SFAC"] == "SFAC C H N O"          # the input's SFAC, N included
  assert lines["UNIT"] == "UNIT 24 20 4 8"        # its UNIT, hydrogens too
  assert notes == []


def test_res_formula_times_z():
  m = synthetic_model("P 1 21/c 1", SITES, "C2 H4 O")
  lines, notes = _lines(m, wavelength=0.71073, cell_esds=(0,) * 6, z=4)
  assert lines["SFAC"] == "SFAC C H O" and lines["UNIT"] == "UNIT 8 16 4"
  assert any("times Z = 4" in n for n in notes)


def test_res_defaults_are_said():
  m = synthetic_model("P 1 21/c 1", SITES)
  lines, notes = _lines(m)
  assert lines["CELL"].startswith("CELL 0.71073 ")
  assert lines["ZERR"].split() == ["ZERR", "4"] + ["0"] * 6
  text = "\n".join(notes)
  assert "wavelength not in the input" in text and "Mo K-alpha" in text
  assert "cell esds not in the input" in text and "Z not in the input" in text
  assert "UNIT: no unit-cell content in the input" in text


@needs_data
def test_model_step_with_epoxide_ins_gives_o_and_carries_the_header(tmp_path):
  """The README's example: the .ins says SFAC C H O, UNIT 8 16 4; with true
  phases the model is O and two C, and the .res keeps ZERR, CELL and UNIT."""
  import iotbx.cif
  xs = list(iotbx.cif.reader(file_path=os.path.join(
    EXPERIMENTAL, "epoxide_P21n", "epoxide.cif")).build_crystal_structures().values())[0]
  data = data_input.read_data(os.path.join(EXAMPLES, "epoxide.hkl"),
                              symmetry_file=os.path.join(EXAMPLES, "epoxide.ins"))
  f = data.miller_array.merge_equivalents().array()
  f = f.select(f.data() > 0).f_sq_as_f()
  fc = f.structure_factors_from_scatterers(xs, algorithm="direct").f_calc()
  log = io.StringIO()
  facts = data.facts
  step = starting_model.build(f, fc.phases(deg=True), data.miller_array,
                              elements=data.composition, wavelength=facts.wavelength,
                              cell_esds=facts.cell_esds, z=facts.z, log=log)
  assert sorted(a.element for a in step.model.atoms) == ["C", "C", "O"]
  res = step.res_text
  assert "ZERR 4 0.005 0.001 0.003 0 0.06 0" in res
  assert "CELL 0.71073 " in res and "SFAC C H O" in res and "UNIT 8 16 4" in res
  assert "elements: C8 H16 O4 (unit cell)" in log.getvalue()
  assert "not in the input" not in log.getvalue()
  # the model CIF: cell with esds, Z, wavelength, formula
  writer = dict(step.writers())["_model.cif"]
  path = str(tmp_path / "m.cif")
  writer(path)
  block = list(iotbx.cif.reader(file_path=path).model().values())[0]
  assert block["_cell.length_a"] == "4.633(5)" and block["_cell.angle_beta"] == "100.37(6)"
  assert block["_cell.formula_units_Z"] == "4"
  assert block["_diffrn_radiation.wavelength"] == "0.71073"
  assert block["_chemical_formula.sum"] == "C2 H4 O"
  back = list(iotbx.cif.reader(file_path=path).build_crystal_structures().values())[0]
  assert back.scatterers().size() == 3
  assert back.unit_cell().is_similar_to(data.miller_array.unit_cell(), 1e-4, 1e-3)


def test_per_cell_composition_sets_the_formula_units():
  cs = crystal.symmetry((4.633, 8.4, 6.577, 90, 100.37, 90), "P 1 21/n 1")
  comp = model_building.Composition(["C", "H", "O"], {"C": 8, "H": 16, "O": 4},
                                    per_cell=True)
  assert model_building._formula_units_per_asu(comp, cs) == 0.25
  placeholder = model_building.Composition(["C", "H", "O"], {"C": 1, "H": 1, "O": 1},
                                           per_cell=True)
  assert model_building._formula_units_per_asu(placeholder, cs) != 0.25


def test_bad_elements_parameter_is_still_a_sorry():
  with pytest.raises(Sorry):
    model_building.parse_elements("C H Qq")


def _true_phase_model(data, cif, elements):
  import re
  import iotbx.cif
  xs = list(iotbx.cif.reader(file_path=cif).build_crystal_structures().values())[0]
  for sc in xs.scatterers():
    sc.scattering_type = re.sub(r"[0-9+-]+$", "", sc.scattering_type)
  f = data.miller_array.merge_equivalents().array()
  f = f.select(f.data() > 0).f_sq_as_f().resolution_filter(d_min=0.8)
  fc = f.structure_factors_from_scatterers(
    xs.customized_copy(crystal_symmetry=f.crystal_symmetry()), algorithm="direct").f_calc()
  return starting_model.build(f, fc.phases(deg=True), data.miller_array,
                              elements=elements).model


@needs_data
def test_cpna_composition_of_the_embedded_res_gives_na():
  """CpNa (Pnma): the cation is Na, as its CIF says (it was Cu)."""
  cif = os.path.join(EXPERIMENTAL, "CpNa_Pnma", "iam.cif")
  data = data_input.read_data(cif)
  model = _true_phase_model(data, cif, data.composition)
  elements = [a.element for a in model.atoms]
  assert elements.count("Na") == 1 and set(elements) <= {"C", "N", "Na"}


@needs_data
def test_no_composition_no_heavy_atom_in_an_organic_map():
  """COD 2016452 (C14 H14 O2) without any composition: no S, P or metal."""
  d = os.path.join(EXPERIMENTAL, "cod2016452_P21c")
  data = data_input.read_data(os.path.join(d, "2016452.hkl"))
  assert data.composition is None
  model = _true_phase_model(data, os.path.join(d, "2016452.cif"), None)
  assert set(a.element for a in model.atoms) <= {"C", "N", "O"}
  assert any("no composition known" in n for n in model.notes)
