"""Tests of the dual-space engine (phai_cctbx.dual_space)."""
import dataclasses
import math
import os

import numpy as np
import pytest

from cctbx import sgtbx
from cctbx.array_family import flex
from cctbx.development import random_structure

from phai_cctbx import benchmark, dual_space, search, symmetry


def _structure(symbol, cell, n_c=6, n_o=2, seed=1):
  flex.set_random_seed(seed)
  import random
  random.seed(seed)
  return random_structure.xray_structure(
    space_group_info=sgtbx.space_group_info(symbol), unit_cell=cell,
    elements=["C"] * n_c + ["O"] * n_o, use_u_iso=True, u_iso=0.02,
    random_u_iso=False, random_f_prime_d_min=0, min_distance=1.2)


def _data(xs, d_min):
  fc = benchmark.structure_factors(xs, d_min)
  return fc, abs(fc).set_observation_type_xray_amplitude()


def _r(std, fc, f_obs, phases):
  """The paper's r of phases (degrees, data's group) against the truth."""
  truth = benchmark.Truth(std, fc)
  return truth.r(search.list_signs(std, f_obs, phases), benchmark.measured_on_list(std, f_obs))


def _true_p1_phases(problem, fc):
  p1 = fc.expand_to_p1()
  lookup = {}
  for h, f in zip(p1.indices(), p1.data()):
    lookup[h] = f
    lookup[(-h[0], -h[1], -h[2])] = f.conjugate()
  return np.array([math.atan2(lookup[h].imag, lookup[h].real)
                   for h in problem.p1_set.indices()])


P21C = ("P 1 21/c 1", (6.3, 7.4, 8.2, 90, 103, 90))


def test_maps_and_structure_factors_are_inverse():
  xs = _structure(*P21C)
  fc, f_obs = _data(xs, 1.2)
  problem = dual_space.P1Problem(f_obs, extend=0)
  phases = _true_p1_phases(problem, fc)
  coefficients = problem.f * np.exp(1j * phases)
  rho = problem.density(coefficients[None])
  g, _ = problem.structure_factors(rho)
  assert np.allclose(g[0], coefficients, atol=1e-8 * problem.f.max())
  # the map of the true F is that of cctbx (up to inversion through the origin)
  assert rho.shape[1:] == problem.n_real


def test_quasi_normalised_amplitudes_have_unit_mean_square():
  xs = _structure(*P21C)
  _, f_obs = _data(xs, 0.9)
  e = dual_space.quasi_normalise(f_obs)
  eps = f_obs.epsilons().data().as_numpy_array()
  assert abs(np.mean(e ** 2 * eps) - 1.0) < 0.15
  assert np.all(np.isfinite(e)) and (e >= 0).all()


def test_true_phases_are_a_fixed_point():
  xs = _structure(*P21C)
  fc, f_obs = _data(xs, 1.0)
  problem = dual_space.P1Problem(f_obs)
  start = _true_p1_phases(problem, fc)
  result = dual_space.flip(problem, start[None], dual_space.Settings(cycles=40))
  sym = dual_space.symmetrise(f_obs, problem.p1_set, result.coefficients[0])
  std = symmetry.prepare(f_obs.crystal_symmetry())
  assert _r(std, fc, f_obs, sym.phases) > 0.99


def test_random_starts_solve_a_small_structure_at_atomic_resolution():
  xs = _structure(*P21C)
  fc, f_obs = _data(xs, 1.0)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  runs = dual_space.run(f_obs, 4)
  rs = [_r(std, fc, f_obs, c.phases) for c in runs]
  best = int(np.argmin([c.r1 for c in runs]))
  assert rs[best] > 0.95, rs
  assert all(c.start == "random" and c.cycles >= 1 for c in runs)


def test_random_phases_are_not_a_solution():
  """The search is not handed the answer: one cycle from random phases is far from it."""
  xs = _structure(*P21C)
  fc, f_obs = _data(xs, 1.0)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  runs = dual_space.run(f_obs, 2, dual_space.Settings(cycles=1, min_cycles=1,
                                                      f_cycles=0, polish_cycles=0))
  assert max(_r(std, fc, f_obs, c.phases) for c in runs) < 0.8


@pytest.mark.parametrize("shift", [(0, 0, 0), (0.5, 0, 0), (0, 0.5, 0.5),
                                   (0.5, 0.5, 0.5), (0.13, 0.71, 0.38)])
def test_symmetrise_finds_the_origin_of_a_shifted_map(shift):
  xs = _structure(*P21C)
  fc, f_obs = _data(xs, 1.0)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  problem = dual_space.P1Problem(f_obs)
  phases = _true_p1_phases(problem, fc)
  hkl = problem.hkl[:problem.size]
  shifted = phases - 2 * math.pi * (hkl @ np.array(shift))
  sym = dual_space.symmetrise(f_obs, problem.p1_set, problem.f * np.exp(1j * shifted))
  assert _r(std, fc, f_obs, sym.phases) > 0.99


@pytest.mark.parametrize("symbol,cell", [
  ("P 1 21/n 1", (6.4, 7.2, 8.1, 90, 98, 90)),
  ("P 1 21/a 1", (7.4, 6.2, 8.1, 90, 106, 90)),
  ("C 1 2/c 1", (9.5, 6.2, 8.1, 90, 111, 90)),
  ("P b c a", (7.1, 8.2, 9.3, 90, 90, 90)),
  ("P n m a", (7.3, 6.2, 8.8, 90, 90, 90)),
  ("P b c n", (7.6, 8.1, 6.9, 90, 90, 90)),
  ("C 1 2/m 1", (9.1, 6.6, 7.7, 90, 104, 90)),
])
def test_every_supported_group_round_trip(symbol, cell):
  """A P 1 map shifted off the origin comes back with the data's symmetry and
  phases that match the structure's."""
  xs = _structure(symbol, cell, n_c=3, n_o=1)
  fc, f_obs = _data(xs, 1.1)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  problem = dual_space.P1Problem(f_obs)
  phases = _true_p1_phases(problem, fc)
  hkl = problem.hkl[:problem.size]
  shifted = phases - 2 * math.pi * (hkl @ np.array([0.21, 0.37, 0.09]))
  sym = dual_space.symmetrise(f_obs, problem.p1_set, problem.f * np.exp(1j * shifted))
  assert sym.phases.size() == f_obs.size()
  assert sym.phases.crystal_symmetry().is_similar_symmetry(f_obs.crystal_symmetry())
  assert _r(std, fc, f_obs, sym.phases) > 0.99


def test_starting_phases_from_a_phase_array():
  xs = _structure(*P21C)
  fc, f_obs = _data(xs, 1.2)
  problem = dual_space.P1Problem(f_obs)
  phases = problem.phases_from(fc.phases(deg=True))
  truth = _true_p1_phases(problem, fc)
  d = np.angle(np.exp(1j * (phases - truth)))
  assert np.abs(d).max() < 1e-6
  half = fc.select(flex.bool([i % 2 == 0 for i in range(fc.size())]))
  partial = problem.phases_from(half.phases(deg=True))
  assert 0 < np.isnan(partial).sum() < problem.size


def test_free_reflections_only_below_atomic_resolution():
  xs = _structure(*P21C)
  _, f_low = _data(xs, 2.0)
  _, f_high = _data(xs, 0.9)
  assert dual_space.P1Problem(f_low, extend=0.5).n_free > 0
  assert dual_space.P1Problem(f_high, extend=0.5).n_free == 0


def test_low_density_elimination_improves_a_near_solution():
  """From the true phases with noise (a near-solution at 1.0 A), LDE on F
  brings the phases to the truth (r after the origin search); zero cycles
  change nothing, and |F_obs| is kept."""
  xs = _structure(*P21C, n_c=10, n_o=3)
  fc, f_obs = _data(xs, 1.0)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  problem = dual_space.P1Problem(f_obs)
  true = _true_p1_phases(problem, fc)
  rng = np.random.default_rng(3)
  noisy = true + rng.normal(0.0, 0.9, size=true.shape)
  start = np.zeros((1, problem.size + problem.n_free), complex)
  start[0, :problem.size] = problem.f * np.exp(1j * noisy)

  def r(coefficients):
    sym = dual_space.symmetrise(f_obs, problem.p1_set, coefficients[0, :problem.size])
    return _r(std, fc, f_obs, sym.phases)

  same = dual_space.low_density_elimination(problem, start, 0)
  assert np.allclose(same, start)
  polished = dual_space.low_density_elimination(problem, start, 200)
  assert np.allclose(np.abs(polished[0, :problem.size]), problem.f)
  r_start, r_polished = r(start), r(polished)
  assert r_start < 0.8 and r_polished > 0.95, (r_start, r_polished)
  # A start whose phases move less than the tolerance stops: with a huge
  # tolerance every start stops after its first cycle.
  one = dual_space.low_density_elimination(problem, start, 1)
  assert not np.allclose(one, start)
  assert np.allclose(dual_space.low_density_elimination(problem, start, 200, tolerance=10.0), one)


def test_refinement_without_flipping_keeps_true_phases_at_low_resolution():
  """At 2.0 A charge flipping moves the true phases away (flipping's fixed
  point is not the truth there); low-density elimination alone
  (``cycles=0``) keeps them, and gives a seed's unphased reflections phases
  with |F_obs|."""
  xs = _structure(*P21C, n_c=10, n_o=3)
  fc, f_obs = _data(xs, 2.0)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  problem = dual_space.P1Problem(f_obs)
  true = _true_p1_phases(problem, fc)

  def r(result):
    sym = dual_space.symmetrise(f_obs, problem.p1_set, result.coefficients[0])
    return _r(std, fc, f_obs, sym.phases)

  refined = dual_space.flip(problem, true[None], dual_space.Settings(cycles=0))
  assert refined.cycles_run[0] == 0 and np.isfinite(refined.r1).all()
  flipped = dual_space.flip(problem, true[None], dual_space.Settings())
  assert r(refined) > 0.95 > r(flipped)
  seed = true.copy()
  seed[::5] = np.nan
  completed = dual_space.flip(problem, seed[None], dual_space.Settings(cycles=0))
  assert np.allclose(np.abs(completed.coefficients[0]), problem.f)
  assert np.all(np.isfinite(np.angle(completed.coefficients[0])))


def test_held_out_amplitudes_are_predicted_by_true_phases_only():
  """The free figure of merit: a map of the true phases predicts the
  amplitudes it was not given, random phases and the true phases with a
  third of them wrong do not; a shift of the origin by half a cell edge
  (a shift of the map by whole grid steps) changes little."""
  xs = _structure(*P21C, n_c=10, n_o=3)
  fc, f_obs = _data(xs, 1.0)
  problem = dual_space.P1Problem(f_obs)
  true = _true_p1_phases(problem, fc)
  rng = np.random.default_rng(2)
  wrong = true + np.pi * (rng.random(true.shape) < 0.33)
  shift = 2 * np.pi * problem.hkl[:problem.size] @ np.array([0.5, 0.0, 0.5])
  cc = dual_space.held_out_cc(problem, np.stack([
    true, problem.random_phases(1, rng)[0], wrong, true + shift]))
  assert cc[0] > 0.8, cc
  assert cc[1] < 0.5 and cc[2] < 0.5, cc
  assert cc[3] == pytest.approx(cc[0], abs=0.05)
  # Reflections a candidate does not phase are left out of its map.
  partial = true.copy()
  partial[::4] = np.nan
  assert dual_space.held_out_cc(problem, partial[None])[0] > 0.6


def test_held_out_correlation_uses_every_reflection_of_a_small_problem():
  """At low resolution a data set has a few dozen reflections in P 1: each
  of them is held out once (the value does not depend on how many are asked
  for beyond that), true phases still beat random ones, and below six
  reflections there is no value."""
  # A cell with room for its atoms (22 A^3 each, as in organic crystals).
  xs = _structure(P21C[0], (8.0, 9.0, 10.0, 90, 103, 90), n_c=6, n_o=2)
  fc, f_obs = _data(xs, 2.0)
  problem = dual_space.P1Problem(f_obs)
  assert 20 < problem.size < 200, problem.size
  true = _true_p1_phases(problem, fc)
  rng = np.random.default_rng(5)
  phases = np.stack([true] + list(problem.random_phases(4, rng)))
  cc = dual_space.held_out_cc(problem, phases)
  assert cc[0] > 0.7 and cc[0] > cc[1:].max() + 0.3, cc
  assert np.allclose(dual_space.held_out_cc(problem, phases, min_held_out=10 ** 6), cc)
  tiny = dual_space.P1Problem(f_obs.select(flex.sort_permutation(f_obs.d_spacings().data(),
                                                                   reverse=True)[:2]))
  assert tiny.size < 6
  assert np.all(dual_space.held_out_cc(tiny, tiny.random_phases(2, rng)) == 0.0)


@pytest.mark.parametrize("symbol,cell", [
  P21C,
  ("P 1 21/n 1", (6.4, 7.2, 8.1, 90, 98, 90)),
  ("C 1 2/c 1", (9.5, 6.2, 8.1, 90, 111, 90)),
  ("P b c a", (7.1, 8.2, 9.3, 90, 90, 90)),
  ("C 1 2/m 1", (9.1, 6.6, 7.7, 90, 104, 90)),
])
def test_sign_combinations_hold_the_true_signs_once_with_the_origin_fixed(symbol, cell):
  """Of the 2**k starts, exactly one has the true phases on every
  reflection it phases, at one of the permissible origins: the origin is
  fixed by the first reflections and every combination of the others' signs
  is there once."""
  xs = _structure(symbol, cell)
  fc, f_obs = _data(xs, 1.6)
  problem = dual_space.P1Problem(f_obs)
  starts = dual_space.sign_combination_starts(problem, 5)
  assert starts.shape == (32, problem.size)
  phased = ~np.isnan(starts)
  assert (phased == phased[0]).all()          # the same reflections in every start
  assert 7 <= phased[0].sum() < problem.size  # the origin's and five more (and mates)
  true = _true_p1_phases(problem, fc)
  hkl = problem.hkl[:problem.size]
  matches = set()
  for shift in [(a, b, c) for a in (0, 0.5) for b in (0, 0.5) for c in (0, 0.5)]:
    moved = true - 2 * math.pi * (hkl @ np.array(shift))
    fit = np.cos(np.where(phased, starts - moved[None, :], 0.0)).min(1)
    matches |= set(np.nonzero(fit > 0.99)[0].tolist())
  assert len(matches) == 1


def test_sign_combinations_of_data_with_sigmas():
  xs = _structure(*P21C)
  _, f_obs = _data(xs, 2.0)
  f_obs = f_obs.customized_copy(sigmas=f_obs.data() * 0.02)
  starts = dual_space.sign_combination_starts(dual_space.P1Problem(f_obs), 3)
  assert starts.shape[0] == 8 and not np.isnan(starts).all()


def test_too_few_centric_reflections_give_no_sign_combinations():
  xs = _structure(*P21C)
  _, f_obs = _data(xs, 3.5)
  problem = dual_space.P1Problem(f_obs)
  assert dual_space.sign_combination_starts(problem, 40).shape == (0, problem.size)


def test_a_snapshot_is_the_run_stopped_after_that_many_cycles():
  """Settings.snapshots: the map after n flipping cycles, polished as an end
  point is, is what a run of exactly n cycles gives; snapshots after the
  last cycle run are left out; run() lists them after the end points."""
  xs = _structure(*P21C)
  fc, f_obs = _data(xs, 1.6)
  problem = dual_space.P1Problem(f_obs)
  starts = problem.random_phases(3, np.random.default_rng(2))
  base = dual_space.Settings(cycles=60, min_cycles=30, patience=10 ** 6)
  result = dual_space.flip(problem, starts, dataclasses.replace(base, snapshots=(40, 5, 500)))
  assert [n for n, _ in result.snapshots] == [5, 40]
  plain = dual_space.flip(problem, starts, base)
  assert np.allclose(result.coefficients, plain.coefficients)
  for n, snap in result.snapshots:
    stopped = dual_space.flip(problem, starts, dataclasses.replace(base, cycles=n, min_cycles=n))
    assert np.allclose(snap.coefficients, stopped.coefficients)
    assert np.allclose(snap.skewness, stopped.skewness)
    assert (snap.cycles_run == n).all()
  assert not np.allclose(result.snapshots[0][1].coefficients, result.coefficients)
  runs = dual_space.run(f_obs, starts, dataclasses.replace(base, snapshots=(5,)),
                        problem=problem, labels=["a", "b", "c"])
  assert [(c.start, c.snapshot) for c in runs] == [
    ("a", 0), ("b", 0), ("c", 0), ("a", 5), ("b", 5), ("c", 5)]


def test_omit_refinement_keeps_true_phases_and_phases_every_reflection():
  """Omit maps from the true phases at 1.0 A end at the truth, also from a
  start that phases only three quarters of the reflections; random phases
  do not become a solution; every result has |F_obs|; no iterations leave
  the start (unphased reflections at phase 0)."""
  xs = _structure(*P21C, n_c=10, n_o=3)
  fc, f_obs = _data(xs, 1.0)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  problem = dual_space.P1Problem(f_obs)
  true = _true_p1_phases(problem, fc)
  partial = true.copy()
  partial[::4] = np.nan
  rng = np.random.default_rng(4)
  starts = np.stack([true, partial, problem.random_phases(1, rng)[0]])
  out = dual_space.omit_refinement(problem, starts, iterations=3)
  assert out.shape == (3, problem.size)
  assert np.allclose(np.abs(out), problem.f[None, :])
  r = [_r(std, fc, f_obs, dual_space.symmetrise(f_obs, problem.p1_set, c).phases) for c in out]
  assert r[0] > 0.95 and r[1] > 0.95 and r[2] < 0.5, r
  none = dual_space.omit_refinement(problem, partial[None], iterations=0)
  assert np.allclose(none[0], problem.f * np.exp(1j * np.where(np.isnan(partial), 0.0, partial)))


def test_an_omit_map_never_uses_a_reflections_own_phase():
  """One iteration gives each reflection the phase that the map of the
  others predicts: changing one reflection's starting phase leaves its own
  new phase as it was, and moves others."""
  xs = _structure(P21C[0], (8.0, 9.0, 10.0, 90, 103, 90), n_c=6, n_o=2)
  fc, f_obs = _data(xs, 1.6)
  problem = dual_space.P1Problem(f_obs)
  true = _true_p1_phases(problem, fc)
  j = int(np.argmax(problem.f))
  changed = true.copy()
  changed[j] += np.pi
  a, b = dual_space.omit_refinement(problem, np.stack([true, changed]), iterations=1)
  assert np.angle(a[j] * np.conj(b[j])) == pytest.approx(0.0, abs=1e-9)
  assert np.abs(np.angle(a * np.conj(b))).max() > 0.1


def _pseudo_translated(seed=3):
  """P2_1/c with two Pb per asymmetric unit half a (a + c) apart (a
  substructure that repeats under t = (1/2, 0, 1/2)) and eight light atoms
  that do not."""
  from cctbx import xray
  xs = _structure("P 1 21/c 1", (12.2, 6.1, 9.4, 90, 101, 90), n_c=6, n_o=2, seed=seed)
  for k, site in enumerate([(0.13, 0.21, 0.07), (0.63, 0.21, 0.57)]):
    xs.add_scatterer(xray.scatterer("Pb%d" % k, site=site, u=0.02, scattering_type="Pb"))
  return xs


def test_a_pseudo_translation_is_read_from_its_weak_reflections():
  fc, f_obs = _data(_pseudo_translated(), 1.6)
  assert list(dual_space.pseudo_translation(f_obs)) == [0.5, 0.0, 0.5]
  # Light atoms alone: none; a centred lattice's own translation is none.
  assert dual_space.pseudo_translation(_data(_structure(*P21C), 1.6)[1]) is None
  c2c = _data(_structure("C 1 2/c 1", (9.5, 6.2, 8.1, 90, 111, 90)), 1.6)[1]
  assert dual_space.pseudo_translation(c2c) is None


VAUQUELINITE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "structures", "p21c_large", "BobHanson_Vauquelinite.cif")


@pytest.mark.skipif(not os.path.isfile(VAUQUELINITE), reason="shared structures not present")
def test_the_origin_of_a_pseudo_translated_structure_is_chosen_by_its_refined_correlation():
  """Vauquelinite, Pb2Cu(CrO4)(PO4)(OH), at 1.6 A: the Pb repeat under
  (1/2, 0, 1/2).  Flipping in P 1 finds the right map, but the first peak
  of the origin search puts the inversion centre on a false one, a quarter
  of the way along t (r about 0.1); a later peak, whose refined shift
  fits clearly better, is the right one, and the search takes it by
  itself."""
  import io
  from phai_cctbx import solve
  xs = benchmark.read_structure(VAUQUELINITE)
  fc, f_obs = _data(xs, 1.6)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  assert list(dual_space.pseudo_translation(f_obs)) == [0.5, 0.0, 0.5]
  problem = dual_space.P1Problem(f_obs)
  flipped = dual_space.flip(problem, problem.random_phases(2, np.random.default_rng(1)),
                            dual_space.Settings())
  for coefficients in flipped.coefficients:
    first = dual_space.symmetrise(f_obs, problem.p1_set, coefficients)
    best = dual_space.symmetrise(f_obs, problem.p1_set, coefficients,
                                 dual_space.pseudo_translation(f_obs))
    assert _r(std, fc, f_obs, first.phases) < 0.5
    assert _r(std, fc, f_obs, best.phases) > 0.95 and best.cc_peak >= first.cc_peak
  log = io.StringIO()
  result = solve.solve(f_obs, method="dual_space", guess_composition=False, log=log)
  assert _r(std, fc, f_obs, result.phases) > 0.95
  assert "half a pseudo-translation (0.5, 0, 0.5) apart" in log.getvalue()


def test_the_other_origin_is_taken_only_where_it_fits_clearly_better(monkeypatch):
  from smtbx.ab_initio import charge_flipping as smtbx_cf
  xs = _structure(*P21C)
  fc, f_obs = _data(xs, 1.6)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  wrong = fc.customized_copy(data=fc.data() * flex.double(
    np.where(np.arange(fc.size()) % 2 == 0, 1.0, -1.0)))
  t = (0.5, 0.0, 0.5)
  problem = dual_space.P1Problem(f_obs)
  coefficients = problem.f.astype(complex)
  for peaks, pseudo, shift in [
      # The other origin (t / 2 plus half cell edges from the first) fits
      # clearly better (misfit 0.005 against 0.010): taken.
      ([(wrong, (0.1, 0.2, 0.3), 0.990), (fc, (0.85, 0.2, 0.05), 0.995)], t, (0.85, 0.2, 0.05)),
      # ... but not without a pseudo-translation,
      ([(wrong, (0.1, 0.2, 0.3), 0.990), (fc, (0.85, 0.2, 0.05), 0.995)], None, (0.1, 0.2, 0.3)),
      # nor where it fits about as well (misfit 0.0095),
      ([(wrong, (0.1, 0.2, 0.3), 0.990), (fc, (0.35, 0.2, 0.55), 0.9905)], t, (0.1, 0.2, 0.3)),
      # nor at a shift unrelated to the pseudo-translation.
      ([(wrong, (0.1, 0.2, 0.3), 0.990), (fc, (0.13, 0.2, 0.3), 0.999)], t, (0.1, 0.2, 0.3))]:
    monkeypatch.setattr(smtbx_cf, "f_calc_symmetrisations", lambda *args: iter(peaks))
    sym = dual_space.symmetrise(f_obs, problem.p1_set, coefficients, pseudo)
    assert sym.origin_shift == shift
    assert (_r(std, fc, f_obs, sym.phases) > 0.99) == (shift == peaks[1][1])
