"""Tests of the hybrid search's choice of a solution (phai_cctbx.search)."""
import numpy as np

from cctbx import sgtbx
from cctbx.array_family import flex
from cctbx.development import random_structure

from phai_cctbx import benchmark, search, symmetry


def _case():
  flex.set_random_seed(3)
  import random
  random.seed(3)
  xs = random_structure.xray_structure(
    space_group_info=sgtbx.space_group_info("P 1 21/c 1"),
    unit_cell=(6.1, 7.2, 8.3, 90, 104, 90), elements=["C"] * 6 + ["O"] * 2,
    use_u_iso=True, u_iso=0.02, random_u_iso=False, random_f_prime_d_min=0,
    min_distance=1.2)
  fc = benchmark.structure_factors(xs, 1.0)
  f_obs = abs(fc).set_observation_type_xray_amplitude()
  std = symmetry.prepare(f_obs.crystal_symmetry())
  values, present = std.map_to_reflection_set(f_obs)
  amplitudes = np.where(present, np.maximum(np.asarray(values).real, 0), 0.0)
  return std, fc, f_obs, amplitudes


def _candidate(std, f_obs, phases, label, method, fom, origin_cc=None):
  c = search.Candidate(label=label, method=method, start="test", phases=phases,
                       signs=search.list_signs(std, f_obs, phases))
  c.fom = fom
  if origin_cc is not None:
    c.terms["origin_cc"] = origin_cc
  return c


def _shifted(phases, every):
  """Phases with every ``every``-th one moved by 180 degrees."""
  shift = flex.double([180.0 if i % every == 0 else 0.0 for i in range(phases.size())])
  return phases.customized_copy(data=phases.data() + shift)


def test_the_most_symmetric_member_of_the_best_solution_is_chosen():
  std, fc, f_obs, amplitudes = _case()
  true = fc.phases(deg=True)
  nearly = _shifted(true, 40)      # the same solution, a few signs off
  wrong = _shifted(true, 2)        # another solution
  cands = [
    _candidate(std, f_obs, nearly, "nearly", "dual_space", 0.9, origin_cc=0.95),
    _candidate(std, f_obs, true, "right", "dual_space", 0.7, origin_cc=0.99),
    _candidate(std, f_obs, wrong, "wrong", "dual_space", 0.2, origin_cc=1.0),
    _candidate(std, f_obs, true, "network", "network", 0.5),
  ]
  assert search.agreement(cands[0], cands[1], amplitudes) > search.AGREEMENT_R
  assert search.agreement(cands[0], cands[2], amplitudes) < search.AGREEMENT_R
  chosen = search.choose(cands, amplitudes)
  assert cands[chosen].label == "right"
  assert cands[chosen].fom == 0.9           # the solution's figure of merit
  assert cands[0].fom == 0.9 and cands[2].fom == 0.2


def test_the_best_is_kept_without_an_agreeing_dual_space_candidate():
  std, fc, f_obs, amplitudes = _case()
  true = fc.phases(deg=True)
  cands = [
    _candidate(std, f_obs, true, "network", "network", 0.9),
    _candidate(std, f_obs, _shifted(true, 2), "other", "dual_space", 0.3, origin_cc=1.0),
  ]
  assert search.choose(cands, amplitudes) == 0
  assert cands[0].fom == 0.9 and cands[1].fom == 0.3
  # A network solution with an agreeing dual-space run: the run stands for it
  # (it phases every measured reflection, the network only its list).
  cands.append(_candidate(std, f_obs, _shifted(true, 40), "run", "dual_space", 0.6,
                          origin_cc=0.97))
  assert search.choose(cands, amplitudes) == 2
  assert cands[2].fom == 0.9
