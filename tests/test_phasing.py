"""Phasing the reflection list: recycling, early stopping, trials, seeds, the FOM,
and (with the shipped model) robustness to a missing strongest reflection."""
import os

import numpy as np
import pytest

import phai_cctbx  # noqa: F401
import iotbx.cif
import torch

from phai_cctbx import phasing, reflection_set, symmetry
from phai_cctbx.model import PhAIConfig, PhAINet
from phai_cctbx.weights import LoadedModel, default_weights_available, load_model

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "structures")
TINY = PhAIConfig(filters=4, cnn_depth=1, dim=16, dim_exp=16, dim_token_exp=8, mlp_depth=1)


class FixedAnswer(torch.nn.Module):
  """A stand-in network whose output ignores the phase input: every trial
  reaches a fixed point after its second cycle."""

  def __init__(self, signs):
    super().__init__()
    self.logits = torch.stack([-torch.as_tensor(signs), torch.as_tensor(signs)]).float() * 3.0
    self.amplitude_scaling = "mean"

  def forward(self, amplitudes, phases_deg):
    return self.logits[None].expand(amplitudes.shape[0], -1, -1)


def _amplitudes(seed=0):
  rng = np.random.default_rng(seed)
  a = rng.exponential(size=1205) * ~reflection_set.systematic_absences()
  return a, np.ones(1205, bool)


def test_fixed_point_stops_early_and_scores_high():
  signs = np.where(np.random.default_rng(1).random(1205) < 0.5, -1.0, 1.0)
  a, m = _amplitudes()
  res = phasing.phase_reflection_set(a, m, FixedAnswer(signs), trials=3, cycles=10)
  assert res.cycles_run.tolist() == [2, 2, 2] and res.converged.all()
  assert (res.signs == signs).all()
  assert np.allclose(res.fom_terms["stability"], 1.0)
  assert res.fom[res.best] > 0.95 and res.verdict == "solved"
  assert res.history.shape == (3, 10, 1205) and (res.history[:, -1] == signs).all()


def test_random_seed_makes_runs_repeatable():
  torch.manual_seed(0)
  model = LoadedModel(PhAINet(TINY).eval(), "mean", {}, "tiny")
  a, m = _amplitudes(2)
  r1 = phasing.phase_reflection_set(a, m, model, trials=4, cycles=3, random_seed=7)
  r2 = phasing.phase_reflection_set(a, m, model, trials=4, cycles=3, random_seed=7)
  r3 = phasing.phase_reflection_set(a, m, model, trials=4, cycles=3, random_seed=8)
  assert (r1.signs == r2.signs).all() and np.array_equal(r1.fom, r2.fom)
  assert r1.history.shape == (4, 3, 1205)
  # the first trial starts from zero phases whatever the seed; the others do not
  assert (r1.signs[0] == r3.signs[0]).all()


def test_invalid_counts():
  a, m = _amplitudes()
  with pytest.raises(ValueError):
    phasing.phase_reflection_set(a, m, FixedAnswer(np.ones(1205)), trials=0)


def test_skewness_prefers_atomic_maps():
  # Signs of a real atomic structure give a skewed map; random signs do not.
  rng = np.random.default_rng(3)
  sites = rng.random((6, 3))
  hkl = reflection_set.indices()
  f = np.zeros(1205)
  for x in sites:  # P 1 21/c 1 with the four copies of each atom
    for r, t in (((1, 1, 1), (0, 0, 0)), ((-1, 1, -1), (0, .5, .5)),
                 ((-1, -1, -1), (0, 0, 0)), ((1, -1, 1), (0, .5, .5))):
      f += np.cos(2 * np.pi * hkl @ (np.array(r) * x + np.array(t)))
  true = np.where(f >= 0, 1.0, -1.0)
  skew = phasing.map_skewness(np.abs(f)[None], np.stack([true, rng.choice([-1.0, 1.0], 1205)]))
  assert skew[0] > 1.0 > skew[1]


def _list_amplitudes_and_signs(path, d_min):
  xs = list(iotbx.cif.reader(file_path=path).build_crystal_structures().values())[0]
  f = xs.structure_factors(d_min=d_min, algorithm="direct").f_calc()
  std = symmetry.prepare(xs.crystal_symmetry())
  values, present = std.map_to_reflection_set(f)
  return np.abs(values), present, np.where(values.real >= 0, 1.0, -1.0)


@pytest.mark.skipif(not default_weights_available(), reason="no trained weights installed")
@pytest.mark.skipif(not os.path.isdir(DATA), reason="development data not present")
def test_missing_strongest_reflection_keeps_the_phases():
  """PhAI's published scaling (largest amplitude = 1) fails when the strongest
  reflection is missing; the shipped model scales by the mean and is not thrown."""
  path = os.path.join(DATA, "p21c_small", "cod-developers_4000464-synthesised-at.cif")
  amp, present, true = _list_amplitudes_and_signs(path, 1.6)
  model = load_model()
  full = phasing.phase_reflection_set(amp, present, model, trials=4, cycles=8)
  weights = amp * reflection_set.unique_mask() * present
  assert reflection_set.sign_correlation(weights, true, full.best_signs) > 0.95
  strongest = int(np.argmax(weights))
  cut = present.copy()
  cut[strongest] = False
  cut[reflection_set.unique_mate() == strongest] = False
  without = phasing.phase_reflection_set(amp, cut, model, trials=4, cycles=8)
  w_cut = weights * cut
  assert reflection_set.sign_correlation(w_cut, true, without.best_signs) > 0.95
  assert reflection_set.sign_correlation(w_cut, full.best_signs, without.best_signs) > 0.98


def test_precision_choice():
  small = LoadedModel(PhAINet(TINY), "mean", {}, "tiny")
  assert not phasing.uses_bfloat16("cpu", "auto", phasing.parameter_count(small))
  assert phasing.uses_bfloat16("cpu", "bfloat16", 0)
  assert not phasing.uses_bfloat16("cpu", "float32", 10 ** 9)
  with pytest.raises(ValueError):
    phasing.uses_bfloat16("cpu", "fp8", 0)
  a, m = _amplitudes()
  res = phasing.phase_reflection_set(a, m, small, trials=2, cycles=2, precision="bfloat16")
  assert res.signs.shape == (2, 1205) and np.isfinite(res.fom).all()
