"""Charge flipping as the benchmark's baseline: it runs, is guarded, and is scored by the paper's r."""
import os

import numpy as np
import pytest

import iotbx.cif

from phai_cctbx import charge_flipping, reflection_set, symmetry

STRUCTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "structures")
EPOXIDE = os.path.join(STRUCTURES, "p21c_small", "AK-Kleemiss_epoxide.cif")

needs_data = pytest.mark.skipif(not os.path.isfile(EPOXIDE), reason="shared structures not present")


def _structure(path):
  return list(iotbx.cif.reader(file_path=path).build_crystal_structures().values())[0]


def _true_signs(std, f_calc):
  values, present = std.map_to_reflection_set(f_calc)
  weights = np.abs(values) * present * reflection_set.unique_mask()
  return weights, np.where(values.real < 0, -1.0, 1.0)


def test_iteration_count_stays_int():
  n = charge_flipping._IterationCount(500)
  n *= 1.5
  assert isinstance(n, int) and n == 750


@needs_data
def test_solves_epoxide_at_atomic_resolution():
  xs = _structure(EPOXIDE)
  std = symmetry.prepare(xs)
  f_calc = xs.structure_factors(d_min=1.0, algorithm="direct").f_calc()
  result = charge_flipping.run(f_calc.as_amplitude_array(), random_seed=0)
  assert result.error is None
  assert result.found_solution and result.had_phase_transition
  assert result.f_calc.space_group_info().type().number() == 14
  assert result.seconds > 0
  weights, true_signs = _true_signs(std, f_calc)
  signs, present = charge_flipping.signs_on_reflection_set(result.f_calc, std)
  assert present.sum() > 250
  r = reflection_set.sign_correlation(weights, true_signs, signs)
  assert r > 0.95


@needs_data
def test_true_phases_score_one_and_random_signs_do_not():
  xs = _structure(EPOXIDE)
  std = symmetry.prepare(xs)
  f_calc = xs.structure_factors(d_min=1.0, algorithm="direct").f_calc()
  weights, true_signs = _true_signs(std, f_calc)
  signs, _ = charge_flipping.signs_on_reflection_set(f_calc, std)
  assert reflection_set.sign_correlation(weights, true_signs, signs) == pytest.approx(1.0)
  # An origin shift of the true structure still scores 1: r maximises over the 8 origins.
  shifted_xs = xs.deep_copy_scatterers()
  shifted_xs.apply_shift((0.5, 0.0, 0.5))
  shifted = shifted_xs.structure_factors(d_min=1.0, algorithm="direct").f_calc()
  signs, _ = charge_flipping.signs_on_reflection_set(shifted, std)
  assert reflection_set.sign_correlation(weights, true_signs, signs) == pytest.approx(1.0)
  rng = np.random.default_rng(0)
  random_signs = np.where(rng.random(len(true_signs)) < 0.5, -1.0, 1.0)
  assert reflection_set.sign_correlation(weights, true_signs, random_signs) < 0.6


@needs_data
def test_unsolvable_run_ends_without_crash():
  # At 2.0 A charge flipping finds no phase transition; after two attempts
  # smtbx scales max_solving_iterations by 1.5, which must not crash.
  xs = _structure(EPOXIDE)
  f_calc = xs.structure_factors(d_min=2.0, algorithm="direct").f_calc()
  result = charge_flipping.run(f_calc.as_amplitude_array(), max_solving_iterations=30,
                               max_attempts=3, random_seed=1, last_map=False)
  assert result.error is None
  assert not result.found_solution
  assert result.f_calc is None and result.n_solutions == 0
  # By default the last map is still placed on the data's symmetry, for an r.
  result = charge_flipping.run(f_calc.as_amplitude_array(), max_solving_iterations=30,
                               max_attempts=3, random_seed=1)
  assert not result.found_solution and result.f_calc is not None
  assert result.f_calc.space_group_info().type().number() == 14
