"""The atom search's composition when none is given
(phai_cctbx.composition_guess)."""
import glob
import io
import math
import os

import pytest

from cctbx import crystal, sgtbx, uctbx, xray

from phai_cctbx import atom_search, benchmark, composition_guess, solve
from phai_cctbx.model_building import parse_elements

STRUCTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                          "structures")


def _p21c():
  return sgtbx.space_group_info("P 1 21/c 1").group()


def test_organic_atoms_is_the_cell_volume_per_18_cubic_angstroms_rounded_up():
  group = _p21c()
  # 1000 A^3 / 17 / 4 = 14.7 atoms in the asymmetric unit
  assert composition_guess.organic_atoms(uctbx.unit_cell((10, 10, 10, 90, 90, 90)), group) == 15
  # exactly 3 atoms: 204 A^3 -> 204 / 17 / 4 = 3, not rounded up to 4
  assert composition_guess.organic_atoms(uctbx.unit_cell((6, 6, 5.666667, 90, 90, 90)), group) == 3
  # a centred cell counts its whole group (C2/c: order 8): 576 / 17 / 8 = 4.2
  c2c = sgtbx.space_group_info("C 1 2/c 1").group()
  assert composition_guess.organic_atoms(uctbx.unit_cell((12, 6, 8, 90, 90, 90)), c2c) == 5


def test_guess_counts_names_heavier_elements_and_takes_unknown_atoms_for_metals():
  cell, group = uctbx.unit_cell((10, 10, 10, 90, 90, 90)), _p21c()
  counts, how = composition_guess.guess_counts(cell, group)
  assert counts == {"C": 60} and "C15" in how
  counts, how = composition_guess.guess_counts(cell, group, ("C", "H", "N", "O", "S", "Br"))
  assert counts == {"C": 52, "S": 4, "Br": 4}
  assert "C13 Br S" in how
  # what the search then places: 15 atoms, the heavy ones first, all molecular
  elements, _ = atom_search.asymmetric_unit_atoms(counts, group)
  assert elements[:2] == ("Br", "S") and len(elements) == 15
  assert atom_search.molecular(counts)
  # a metal named without counts: atoms of unknown element, one per 11 A^3
  counts, how = composition_guess.guess_counts(cell, group, ("Na", "Cl", "O"))
  assert counts == {atom_search.UNKNOWN: 91} and "Na Cl O" in how and "22.75" in how
  assert composition_guess.describe(counts, group) == "X22.75 (any element)"
  # ... tried next at 13 A^3 per atom, and nothing organic after it
  assert composition_guess.guessed_alternatives(counts, cell, group, ("Na", "Cl", "O")) == [
    {atom_search.UNKNOWN: 77}]
  # no elements named: carbon, sulfur in its place, then the unknown atoms
  counts, _ = composition_guess.guess_counts(cell, group)
  alternatives = composition_guess.guessed_alternatives(counts, cell, group)
  assert [composition_guess.describe(c, group) for c in alternatives] == [
    "C16", "C14 S1", "C13 S2", "C12 S3", "X22.75 (any element)", "X19.25 (any element)"]
  # an organic crystal named: one atom more, no heavier or unknown atoms
  assert composition_guess.guessed_alternatives(
    counts, cell, group, ("C", "H", "N", "O")) == [{"C": counts["C"] + group.order_z()}]
  # a named heavy atom stays, with one carbon more
  counts, _ = composition_guess.guess_counts(cell, group, ("C", "H", "S"))
  more = composition_guess.guessed_alternatives(counts, cell, group, ("C", "H", "S"))[0]
  assert composition_guess.describe(more, group) == "C15 S1"


def _molecular_structures():
  out = []
  for path in sorted(glob.glob(os.path.join(STRUCTURES, "*", "*.cif"))):
    xs = benchmark.read_structure(path)
    counts = benchmark.cell_composition(xs, xs)
    if atom_search.molecular(counts):
      out.append((os.path.basename(path), xs, counts))
  return out


@pytest.mark.skipif(not os.path.isdir(STRUCTURES), reason="shared structures not present")
def test_guessed_atom_count_of_real_organic_crystals_is_close_to_the_true_one():
  """Every molecular crystal of the development structures: the guess is
  within two atoms of the true count of the asymmetric unit (hydrogen
  aside), and most are the true count or one more."""
  rows = _molecular_structures()
  assert len(rows) >= 20
  off = []
  for name, xs, counts in rows:
    group = xs.space_group()
    true = sum(c for e, c in counts.items() if e not in ("H", "D")) / group.order_z()
    guess = composition_guess.organic_atoms(xs.unit_cell(), group)
    off.append(guess - true)
    assert abs(guess - true) <= 0.2 * true + 2, (name, guess, true)
  near = sum(1 for d in off if -0.5 <= d <= 1.5)
  assert near >= 0.6 * len(off), off


@pytest.mark.skipif(not os.path.isdir(STRUCTURES), reason="shared structures not present")
def test_formula_units_of_real_organic_crystals_follow_the_cell_volume():
  """Every molecular crystal of the development structures, its content
  written as a formula of one, two and half an asymmetric unit: Z is the
  group's order, half of it (a molecule on a special position) and twice."""
  rows = _molecular_structures()
  assert len(rows) >= 20
  for name, xs, counts in rows:
    group = xs.space_group()
    order = group.order_z()
    for units_per_formula, z in ((1, order), (2, order / 2), (0.5, 2 * order)):
      formula = dict((e, c * units_per_formula / order) for e, c in counts.items())
      assert composition_guess.formula_units(formula, xs.unit_cell(), group) == z, \
        (name, units_per_formula)


@pytest.mark.skipif(not os.path.isdir(STRUCTURES), reason="shared structures not present")
def test_formula_unit_choices_of_real_inorganic_cells_hold_the_true_z():
  """Every inorganic cell of the development structures, its content
  written as the formula in lowest terms: the true Z is the first of the
  two choices for most, one of them for nearly all."""
  from functools import reduce
  first = among = n = 0
  for path in sorted(glob.glob(os.path.join(STRUCTURES, "*", "*.cif"))):
    xs = benchmark.read_structure(path)
    counts = dict((e, int(round(c))) for e, c in benchmark.cell_composition(xs, xs).items())
    if atom_search.molecular(counts):
      continue
    z = reduce(math.gcd, counts.values())
    choices = composition_guess.formula_unit_choices(
      dict((e, c // z) for e, c in counts.items()), xs.unit_cell(), xs.space_group())
    assert 1 <= len(choices) <= 2
    n += 1
    first += choices[0] == z
    among += z in choices
  assert n >= 30 and first >= 0.8 * n and among >= 0.9 * n, (n, first, among)


def test_formula_unit_choices_fill_whole_positions():
  group = _p21c()
  # Na3AlF6 in cryolite's cell (234 A^3): Z = 1 would put 3 Na in a cell
  # of P2_1/c, which no positions hold; Z = 4 gives 5.9 A^3 per atom
  cell = uctbx.unit_cell((5.40, 5.60, 7.76, 90, 90.2, 90))
  assert composition_guess.formula_unit_choices({"Na": 3, "Al": 1, "F": 6}, cell, group) == [2]
  # SiO2 in 150 A^3: Z = 4 (12.5 A^3 per atom), then Z = 2 (25)
  cell = uctbx.unit_cell((5, 5, 6, 90, 90, 90))
  assert composition_guess.formula_unit_choices({"Si": 1, "O": 2}, cell, group) == [4, 2]
  assert composition_guess.formula_unit_choices({"Si": 1, "O": 2}, cell, group, most=1) == [4]
  assert composition_guess.formula_unit_choices({"H": 2}, cell, group) == []


def test_formula_units_only_for_organic_formulas():
  cell, group = uctbx.unit_cell((9.748, 8.89, 7.566, 90, 112.74, 90)), _p21c()
  # COD 2016452, C14 H14 O2 on an inversion centre: 605 A^3 / 17 / 16 = 2.2
  assert composition_guess.formula_units({"C": 14, "H": 14, "O": 2}, cell, group) == 2
  # hydrogen does not count; a half molecule as the formula: Z = 4
  assert composition_guess.formula_units({"C": 7, "O": 1}, cell, group) == 4
  assert composition_guess.formula_units({"Na": 1, "C": 1, "O": 3}, cell, group) is None
  assert composition_guess.formula_units({"Si": 1, "O": 2}, cell, group) is None
  assert composition_guess.formula_units({"H": 2}, cell, group) is None


def test_solve_without_composition_searches_a_guessed_organic_cell():
  """Formamide-like cell (C, N, O as given), 2.0 A, no composition: the
  search (alone: no dual-space starts) places guessed carbon atoms and
  phases the data."""
  xs = xray.structure(crystal_symmetry=crystal.symmetry(
    unit_cell=(3.69, 9.18, 6.87, 90, 82, 90), space_group_symbol="P 1 21/n 1"))
  for label, site in (("C1", (0.1986, 0.0983, 0.0962)), ("N1", (0.0747, 0.1962, 0.2041)),
                      ("O1", (0.4125, 0.1206, -0.0229))):
    xs.add_scatterer(xray.scatterer(label=label, site=site, u=0.03))
  xs.scattering_type_registry(table="wk1995")
  f_calc = xs.structure_factors(d_min=2.0, algorithm="direct").f_calc()
  log = io.StringIO()
  result = solve.solve(f_calc.amplitudes(), method="dual_space", log=log,
                       atom_restarts=256, dual_space_starts=0, sign_combinations=0,
                       dual_space_more_starts=0, omit_refinement=0)
  text = log.getvalue()
  assert "an organic crystal assumed, C" in text
  assert result.chosen.method == "atom_search"
  r = benchmark.Truth(result.standardisation, f_calc).r(
    *_signs_and_measured(result, f_calc))
  assert r > 0.95
  # without the guess no atom search runs
  log = io.StringIO()
  solve.solve(f_calc.amplitudes(), method="dual_space", log=log, guess_composition=False,
              dual_space_more_starts=0, omit_refinement=0)
  assert "atom search" not in log.getvalue()


def test_solve_places_atoms_of_unknown_element_where_a_metal_is_named_without_counts():
  """CaSO4-like cell (Ca on an inversion centre, S and two O in general
  positions, 14 atoms in 227 A^3, 2.0 A), ``elements="Ca S O"`` without
  counts: the atom search places 21 atoms of unknown element (V / 11 A^3),
  then 17 (V / 13 A^3), fits their scattering, and a model of them is the
  answer (atoms to spare end with little weight); a guess gives no
  starting model."""
  xs = xray.structure(crystal_symmetry=crystal.symmetry(
    unit_cell=(5.2, 6.1, 7.3, 90, 101, 90), space_group_symbol="P 1 21/c 1"))
  for label, site in (("Ca1", (0.0, 0.0, 0.0)), ("S1", (0.31, 0.22, 0.41)),
                      ("O1", (0.12, 0.38, 0.27)), ("O2", (0.55, 0.09, 0.18))):
    xs.add_scatterer(xray.scatterer(label=label, site=site, u=0.01))
  xs.scattering_type_registry(table="wk1995")
  f_calc = xs.structure_factors(d_min=2.0, algorithm="direct").f_calc()
  log = io.StringIO()
  result = solve.solve(f_calc.amplitudes(), method="dual_space", log=log,
                       elements=("Ca", "S", "O"), atom_restarts=256, dual_space_starts=0,
                       sign_combinations=0, dual_space_more_starts=0, omit_refinement=0,
                       peak_maps=0)
  text = log.getvalue()
  assert "the elements Ca S O named without counts: 5.25 atoms of unknown element" in text
  assert "then X4.25 (any element)" in text
  assert "then 1 or 2 heavy atoms of unknown element alone, the rest (C3 X1, C2 X2)" in text
  # A model of the guesses is decisive: no search of heavy atoms follows.
  assert "heavy atoms of unknown element (X1" not in text
  assert "(any element), R1 0.0" in result.chosen.label
  assert result.atom_model is None
  assert benchmark.Truth(result.standardisation, f_calc).r(
    *_signs_and_measured(result, f_calc)) > 0.95


def test_solve_searches_a_formula_s_next_number_of_formula_units():
  """SiO2 (Si and two O on general positions, Z = 4) in 120 A^3, 1.6 A,
  the formula given without Z: the likeliest Z by volume is 2 (20 A^3 per
  atom), whose atoms cannot fit; the next, Z = 4, is searched too and its
  model chosen."""
  xs = xray.structure(crystal_symmetry=crystal.symmetry(
    unit_cell=(4.8, 5.0, 5.0, 90, 90, 90), space_group_symbol="P 1 21/c 1"))
  for label, site in (("Si1", (0.8018, 0.0537, 0.7270)), ("O1", (0.9846, 0.0194, 0.9971)),
                      ("O2", (0.5427, 0.2610, 0.7135))):
    xs.add_scatterer(xray.scatterer(label=label, site=site, u=0.015))
  xs.scattering_type_registry(table="wk1995")
  f_calc = xs.structure_factors(d_min=1.6, algorithm="direct").f_calc()
  choices, how = atom_search.cell_count_choices(
    parse_elements("Si O2"), None, f_calc.space_group(), f_calc.unit_cell())
  assert choices == [{"Si": 2, "O": 4}, {"Si": 4, "O": 8}]
  log = io.StringIO()
  result = solve.solve(f_calc.amplitudes(), method="dual_space", log=log, min_reflections=10,
                       atom_restarts=256, dual_space_starts=0, sign_combinations=0,
                       dual_space_more_starts=0, omit_refinement=0, peak_maps=0,
                       composition=choices[0], composition_alternatives=choices[1:])
  text = log.getvalue()
  assert "where no model stands out, then Si1 O2" in text
  assert "atom search (2 atoms: Si0.5 O1, Si1 O2)" in text
  assert result.chosen.label.startswith("atom model 1 (Si1 O2")
  assert benchmark.Truth(result.standardisation, f_calc).r(
    *_signs_and_measured(result, f_calc)) > 0.95


def _signs_and_measured(result, f_calc):
  from phai_cctbx import search
  std = result.standardisation
  return (search.list_signs(std, result.f_obs, result.phases),
          benchmark.measured_on_list(std, f_calc))


def _tiny_problem():
  """(f_obs, standardisation, weights, phases) of a two-atom P2_1/c cell at 2.0 A."""
  import numpy as np
  from phai_cctbx import symmetry
  xs = xray.structure(crystal_symmetry=crystal.symmetry(
    unit_cell=(5.2, 6.1, 7.3, 90, 101, 90), space_group_symbol="P 1 21/c 1"))
  for label, site in (("C1", (0.1, 0.2, 0.3)), ("O1", (0.31, 0.12, 0.05))):
    xs.add_scatterer(xray.scatterer(label=label, site=site, u=0.02))
  f_calc = xs.structure_factors(d_min=2.0, algorithm="direct").f_calc()
  f_obs = f_calc.amplitudes()
  std = symmetry.prepare(f_obs.crystal_symmetry())
  values, present = std.map_to_reflection_set(f_obs)
  weights = np.where(present, np.maximum(values.real, 0.0), 0.0)
  return f_obs, std, weights, f_calc.phases(deg=True)


def _agreeing_models(phases, r1, n=3, element="C"):
  """``n`` atom models of one solution (the best placements all agree)."""
  import numpy as np
  elements = (element,) if isinstance(element, str) else tuple(element)
  return [atom_search.AtomModel(elements=elements, occupancies=np.ones(len(elements)),
                                sites=np.zeros((len(elements), 3)), b=2.0, r1=r1 + 0.001 * k,
                                rot=None, trans=None, phases=phases)
          for k in range(n)]


@pytest.mark.parametrize("guessed, r1, free_r1, mark", [
  (False, 0.05, 0.25, "decisive"),    # a given composition: as it was
  (False, 0.12, 0.15, "stands_out"),  # a given molecular one above DECISIVE_R1, confirmed
  (False, 0.12, 0.25, None),          # ... not confirmed
  (False, 0.16, 0.17, None),          # ... above GUESSED_R1
  (True, 0.05, 0.08, "decisive"),     # guessed and confirmed: solved
  (True, 0.05, 0.25, None),           # guessed, not confirmed (Bridgmanite)
  (True, 0.12, 0.15, "stands_out"),   # guessed, R1 0.10-0.15, confirmed
  (True, 0.16, 0.17, None),           # above GUESSED_R1
  ("X", 0.03, 0.05, "decisive"),      # atoms of unknown element, confirmed
  ("X", 0.03, 0.25, None),            # ... not confirmed
  ("X", 0.071, 0.12, None),           # above UNKNOWN_R1 (Nontronite, wrong)
  ("XCCCCC", 0.12, 0.15, "stands_out"),  # one heavy atom of unknown element among carbon
  ("XXCC", 0.101, 0.12, None),        # half of them: as unknown atoms (Celadonite, wrong)
  ("XXCC", 0.046, 0.06, "decisive"),  # ... below UNKNOWN_R1 (GLYCIN75, right)
])
def test_a_guessed_composition_needs_the_cross_validated_check(monkeypatch, guessed, r1,
                                                               free_r1, mark):
  from phai_cctbx import search
  f_obs, std, weights, phases = _tiny_problem()
  models = _agreeing_models(phases, r1, element=tuple(guessed) if isinstance(guessed, str)
                            else "C")
  guessed = bool(guessed)
  monkeypatch.setattr(search.atom_search_engine, "run", lambda *a, **k: models)
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1", lambda f, m: free_r1)
  s = search.SearchSettings(composition_guessed=guessed)
  kept, _ = search._atom_candidates(f_obs, {"C": 8}, std, weights, s)
  assert len(kept) == 1
  marks = [m for m in ("decisive", "stands_out") if kept[0].terms.get(m)]
  assert marks == ([mark] if mark else [])
  search.assess(kept, search.dual_space_engine.P1Problem(f_obs), weights)
  if mark == "stands_out":
    assert search.PROBABLE_ATOM_FOM <= kept[0].fom < search.DECISIVE_ATOM_FOM


@pytest.mark.parametrize("elements, r1, mark", [
  (("C",) * 6, 0.108, "stands_out"),        # biphenyl at 1.6 A: right, hydrogen left out
  (("Mg", "Si", "O", "O"), 0.108, None),    # no hydrogen to leave out: above DECISIVE_R1
  (("Mg", "Si", "O", "O"), 0.05, "decisive"),
])
def test_a_given_molecular_composition_stands_out_up_to_the_guessed_limit(
    monkeypatch, elements, r1, mark):
  """A given molecular composition's model leaves its hydrogen atoms out, so
  its right model fits as a guess's does: standing out between DECISIVE_R1
  and GUESSED_R1 and confirmed, it is probably solved; an inorganic
  composition's model is held to DECISIVE_R1."""
  from phai_cctbx import search
  f_obs, std, weights, phases = _tiny_problem()
  models = _agreeing_models(phases, r1, element=elements)
  monkeypatch.setattr(search.atom_search_engine, "run", lambda *a, **k: models)
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1", lambda f, m: m.r1 + 0.03)
  kept, _ = search._atom_candidates(f_obs, {"C": 8}, std, weights, search.SearchSettings())
  marks = [m for m in ("decisive", "stands_out", "clear") if kept[0].terms.get(m)]
  assert marks == ([mark] if mark else [])
  search.assess(kept, search.dual_space_engine.P1Problem(f_obs), weights)
  verdict_fom = {"stands_out": search.PROBABLE_ATOM_FOM, "decisive": search.DECISIVE_ATOM_FOM}
  assert kept[0].fom >= verdict_fom.get(mark, 0.0)
  if mark is None:
    assert kept[0].fom < search.PROBABLE_ATOM_FOM


@pytest.mark.parametrize("r1_other, free_other, clear", [
  (0.156, 0.265, True),    # COD 2016452 at 2.0 A, measured: chosen
  (0.105, 0.220, False),   # a wrong solution as good: the held-out correlation decides
])
def test_a_clear_model_is_chosen_unless_another_candidate_is_solved(
    monkeypatch, r1_other, free_other, clear):
  import numpy as np
  from phai_cctbx import search
  f_obs, std, weights, phases = _tiny_problem()
  from cctbx.array_family import flex
  p = phases.data().as_numpy_array()
  # every other sign flipped: another solution
  wrong = phases.customized_copy(data=flex.double(np.where(np.arange(p.size) % 2, p + 180.0, p)))
  models = _agreeing_models(phases, 0.094) + _agreeing_models(wrong, r1_other)
  free = {0.094: 0.187, r1_other: free_other}
  monkeypatch.setattr(search.atom_search_engine, "run", lambda *a, **k: models)
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1",
                      lambda f, m: free[round(m.r1, 3)])
  kept, _ = search._atom_candidates(f_obs, {"C": 8}, std, weights, search.SearchSettings())
  assert len(kept) == 2 and not kept[0].terms.get("decisive")
  assert bool(kept[0].terms.get("clear")) == clear
  # A dual-space map that predicts held-out amplitudes better, not solved.
  other = search.Candidate(label="dual-space random 1", method="dual_space", start="random",
                           phases=wrong, signs=search.list_signs(std, f_obs, wrong))
  candidates = kept + [other]
  search.assess(candidates, search.dual_space_engine.P1Problem(f_obs), weights)
  for c in candidates:   # maps of atoms all (positive skewness)
    c.terms["held_out_cc"], c.terms["skewness"] = 0.25, 1.0
  other.terms["held_out_cc"], other.fom = 0.5, 0.3
  if clear:
    assert search.PROBABLE_ATOM_FOM <= kept[0].fom < search.DECISIVE_ATOM_FOM
  assert search.top_candidate(candidates) == (0 if clear else 2)
  assert search.choose(candidates, weights, f_obs, std) == (0 if clear else 2)
  # Another candidate called solved: the clear model no longer comes first.
  other.fom = search.DECISIVE_ATOM_FOM
  assert search.top_candidate(candidates) == 2


@pytest.mark.parametrize("free_r1, mark", [(0.25, None), (0.08, "decisive")])
def test_a_model_from_map_peaks_needs_the_cross_validated_check(monkeypatch, free_r1, mark):
  """Placements started at one map's peaks agree whether right or wrong: even
  with a given composition their model stands out only when confirmed."""
  from phai_cctbx import search
  f_obs, std, weights, phases = _tiny_problem()
  models = _agreeing_models(phases, 0.05)
  calls = []

  def from_peaks(f, counts, peak_sets, **kw):
    calls.append(len(peak_sets))
    return models
  monkeypatch.setattr(search.atom_search_engine, "from_peaks", from_peaks)
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1", lambda f, m: free_r1)
  source = search.Candidate(label="dual-space random 1", method="dual_space",
                            start="random", phases=phases,
                            signs=search.list_signs(std, f_obs, phases))
  kept = search._peak_candidates(f_obs, {"C": 4, "O": 4}, [source], std, weights,
                                 search.SearchSettings())
  assert calls == [1] and len(kept) == 1
  assert kept[0].label.startswith("peak atom model 1 (R1 0.050")
  assert [m for m in ("decisive", "stands_out") if kept[0].terms.get(m)] == \
    ([mark] if mark else [])


def test_heavier_alternatives_turn_carbon_atoms_into_sulfur_or_the_named_heavy_element():
  group = _p21c()
  counts = {"C": 56}   # C14 per asymmetric unit
  alternatives = composition_guess.heavier_alternatives(counts, group)
  assert alternatives == [{"C": 52, "S": 4}, {"C": 48, "S": 8}, {"C": 44, "S": 12}]
  assert [composition_guess.describe(c, group) for c in alternatives] == [
    "C13 S1", "C12 S2", "C11 S3"]
  # the heaviest element named takes the place of sulfur, added to its count
  alternatives = composition_guess.heavier_alternatives(
    {"C": 48, "S": 4, "Br": 4}, group, ("C", "H", "S", "Br"))
  assert alternatives[0] == {"C": 44, "S": 4, "Br": 8}
  assert composition_guess.describe(alternatives[0], group) == "C11 Br2 S1"
  # only light elements named: nothing heavier to place
  assert composition_guess.heavier_alternatives(counts, group, ("C", "H", "N", "O")) == []
  # at least two carbon atoms kept
  assert len(composition_guess.heavier_alternatives({"C": 16}, group)) == 2
  assert composition_guess.heavier_alternatives({"C": 8}, group) == []


@pytest.mark.parametrize("r1_of, tried, chosen", [
  # the carbon guess stands out (confirmed): nothing else is tried
  ({0: 0.05, 1: 0.03}, ["C6"], "C6"),
  # it does not: the guesses in turn until one is decisive, the best kept
  ({0: 0.20, 1: 0.18, 2: 0.06, 3: 0.02}, ["C6", "C5 S1", "C4 S2"], "C4 S2"),
  # none stands out: all tried, the lowest R1 kept beside the carbon guess
  ({0: 0.20, 1: 0.25, 2: 0.17, 3: 0.22}, ["C6", "C5 S1", "C4 S2", "C3 S3"], "C4 S2"),
  # none fits better than carbon: the carbon guess alone
  ({0: 0.20, 1: 0.25, 2: 0.27, 3: 0.22}, ["C6", "C5 S1", "C4 S2", "C3 S3"], "C6"),
])
def test_guessed_compositions_are_tried_in_turn(monkeypatch, r1_of, tried, chosen):
  from phai_cctbx import search
  f_obs, std, weights, phases = _tiny_problem()
  group = f_obs.space_group()
  first = {"C": 24}
  guesses = [first] + composition_guess.heavier_alternatives(first, group)
  runs = []

  def fake_run(f, counts, **kwds):
    runs.append(composition_guess.describe(counts, group))
    return _agreeing_models(phases, r1_of[counts.get("S", 0) // 4])
  monkeypatch.setattr(search.atom_search_engine, "run", fake_run)
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1", lambda f, m: m.r1 + 0.03)
  # Past the search's time limit before the first further guess: the
  # guesses run all the same (a fixed amount of work, whatever the clock).
  s = search.SearchSettings(composition_guessed=True, time_limit=-1.0)
  found, used, best, searches = search._alternative_atom_candidates(
    f_obs, guesses, std, weights, s)
  assert runs == tried and searches == len(tried)
  assert [composition_guess.describe(c, group) for c in used] == tried
  assert found[0].label.startswith("atom model 1 (C6, R1")
  assert found[-1].label.startswith("atom model 1 (%s, R1" % chosen)
  assert len(found) == (1 if chosen == "C6" else 2)
  assert composition_guess.describe(best, group) == chosen


def test_a_guess_whose_model_stands_out_is_kept_beside_one_that_only_fits_better(monkeypatch):
  """A further guess whose model stands out (confirmed) is kept, and named
  the best composition, even where a later guess fits better without
  standing out (atoms of unknown element fit most data); a decisive model
  ends the guesses whatever the R1 of those before it."""
  from phai_cctbx import search
  f_obs, std, weights, phases = _tiny_problem()
  group = f_obs.space_group()
  first = {"C": 24}
  guesses = [first] + composition_guess.heavier_alternatives(first, group)
  r1_of = {0: 0.20, 1: 0.12, 2: 0.105, 3: 0.18}
  runs = []

  def fake_run(f, counts, **kwds):
    runs.append(composition_guess.describe(counts, group))
    return _agreeing_models(phases, r1_of[counts.get("S", 0) // 4])
  monkeypatch.setattr(search.atom_search_engine, "run", fake_run)
  # C5 S1 (R1 0.12) is confirmed; C4 S2 (0.105) is not
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1",
                      lambda f, m: m.r1 + (0.03 if m.r1 > 0.11 else 0.30))
  s = search.SearchSettings(composition_guessed=True, time_limit=-1.0)
  found, used, best, searches = search._alternative_atom_candidates(
    f_obs, guesses, std, weights, s)
  assert runs == ["C6", "C5 S1", "C4 S2", "C3 S3"]
  firsts = [c for c in found if c.label.startswith("atom model 1 ")]
  assert [c.label.split(",")[0] for c in firsts] == [
    "atom model 1 (C6", "atom model 1 (C5 S1", "atom model 1 (C4 S2"]
  assert firsts[1].terms.get("stands_out") and not firsts[2].terms.get("stands_out")
  assert composition_guess.describe(best, group) == "C5 S1"
  # A decisive model ends the guesses though an earlier one fitted better.
  r1_of.update({0: 0.08, 1: 0.09, 2: 0.05})
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1",
                      lambda f, m: m.r1 + (0.30 if m.r1 < 0.085 else 0.03))
  runs.clear()
  found, used, best, searches = search._alternative_atom_candidates(
    f_obs, guesses, std, weights, s)
  assert runs == ["C6", "C5 S1"] and composition_guess.describe(best, group) == "C5 S1"
  assert any(c.terms.get("decisive") for c in found)


def test_heavy_unknown_guesses_put_one_then_two_heavy_atoms_beside_carbon():
  from cctbx import crystal
  symm = crystal.symmetry((9.0, 10.0, 11.0, 90, 100, 90), "P 1 21/c 1")
  cell, group = symm.unit_cell(), symm.space_group()
  X = atom_search.UNKNOWN
  assert composition_guess.organic_atoms(cell, group) == 15
  guesses = composition_guess.heavy_unknown_guesses(cell, group, 120)
  assert guesses == [({X: 4}, {X: 4, "C": 56}), ({X: 8}, {X: 8, "C": 52})]
  assert composition_guess.describe(guesses[1][1], group) == "C13 X2 (any element)"
  # Few reflections: fewer atoms in all (one per HEAVY_PEAK_REFLECTIONS_PER_ATOM),
  # at least MIN_LIGHT_ATOMS of them carbon.
  assert composition_guess.heavy_unknown_guesses(cell, group, 30) == [
    ({X: 4}, {X: 4, "C": 16}), ({X: 8}, {X: 8, "C": 12})]
  assert composition_guess.heavy_unknown_guesses(cell, group, 18) == [
    ({X: 4}, {X: 4, "C": 8})]
  assert composition_guess.heavy_unknown_guesses(cell, group, 12) == []
  # Only light elements named: nothing heavy to find; a heavier one or a metal named: searched.
  assert composition_guess.heavy_unknown_guesses(cell, group, 120, ("C", "H", "N", "O")) == []
  assert composition_guess.heavy_unknown_guesses(cell, group, 120, ("C", "H", "Br")) == guesses
  assert composition_guess.heavy_unknown_guesses(cell, group, 120, ("Fe", "O")) == guesses
  # A given composition's count of atoms in place of the organic guess.
  assert composition_guess.heavy_unknown_guesses(cell, group, 120, atoms=18) == [
    ({X: 4}, {X: 4, "C": 68}), ({X: 8}, {X: 8, "C": 64})]
  assert composition_guess.heavy_unknown_guesses(cell, group, 30, atoms=18)[0] == (
    {X: 4}, {X: 4, "C": 16})


def test_given_atoms_counts_the_asymmetric_unit_without_hydrogen():
  group = sgtbx.space_group_info("P 1 21/c 1").group()
  assert composition_guess.given_atoms({"C": 52, "H": 60, "N": 12, "O": 8}, group) == 18
  assert composition_guess.given_atoms({"Ca": 2, "S": 4, "O": 8, "D": 4}, group) == 4
  assert composition_guess.given_atoms({"H": 8}, group) == 0


class _Planned(Exception):
  pass


def test_solve_plans_heavy_atoms_of_unknown_element_for_a_given_composition(monkeypatch):
  """A given composition beyond the random atom search and the search from
  map peaks (2.0 A), without heavy atoms to search for by element (18 C,
  N, O atoms per asymmetric unit):
  one, then two heavy atoms of unknown element are searched for where no
  model is decisive, the rest of its 18 atoms carbon; a composition with
  a metal to search for by element, one within the random atom search
  (12 atoms), the atom search off, or finer data whose peaks can place the
  composition itself, plans none."""
  import random
  from phai_cctbx import search
  rng = random.Random(3)
  xs = xray.structure(crystal_symmetry=crystal.symmetry(
    unit_cell=(9.0, 10.0, 11.0, 90, 100, 90), space_group_symbol="P 1 21/c 1"))
  for i, e in enumerate("C" * 13 + "NNNOO"):
    xs.add_scatterer(xray.scatterer(label="%s%d" % (e, i), u=0.02,
                                    site=tuple(rng.random() for _ in range(3))))
  xs.scattering_type_registry(table="wk1995")
  f_obs = xs.structure_factors(d_min=2.0, algorithm="direct").f_calc().amplitudes()
  planned = []

  def run(*args, **kwargs):
    planned.append(kwargs["heavy_guesses"])
    raise _Planned()

  monkeypatch.setattr(search, "run", run)
  X = atom_search.UNKNOWN
  for composition, atom_search_on, expected in (
      ({"C": 52, "H": 60, "N": 12, "O": 8}, True,
       [({X: 4}, {X: 4, "C": 68}), ({X: 8}, {X: 8, "C": 64})]),
      ({"C": 52, "H": 60, "N": 12, "O": 8}, False, []),
      ({"Fe": 4, "C": 48, "H": 60, "N": 12, "O": 8}, True, []),
      ({"C": 32, "H": 40, "N": 8, "O": 8}, True, [])):
    log = io.StringIO()
    with pytest.raises(_Planned):
      solve.solve(f_obs, method="dual_space", log=log, composition=composition,
                  atom_search=atom_search_on)
    assert planned[-1] == expected
    text = log.getvalue()
    assert ("then 1 or 2 heavy atoms of unknown element alone, the rest (C17 X1, C16 X2)"
            in text) == bool(expected)
  # At 1.3 A the search from map peaks places the given composition itself.
  f_fine = xs.structure_factors(d_min=1.3, algorithm="direct").f_calc().amplitudes()
  with pytest.raises(_Planned):
    solve.solve(f_fine, method="dual_space", composition={"C": 52, "H": 60, "N": 12, "O": 8})
  assert planned[-1] == []
