"""Tests of the hybrid search's choice of a solution (phai_cctbx.search)."""
import dataclasses
import os

import numpy as np
import pytest

from cctbx import sgtbx
from cctbx.array_family import flex
from cctbx.development import random_structure

from phai_cctbx import atom_search, benchmark, dual_space, search, symmetry


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


def _at(f_obs, std, d_min):
  """``f_obs`` cut to ``d_min``, its amplitudes on the network's list and
  which of them are measured."""
  f = f_obs.resolution_filter(d_min=d_min)
  values, present = std.map_to_reflection_set(f)
  present = np.asarray(present, dtype=bool)
  return f, np.where(present, np.maximum(np.asarray(values).real, 0), 0.0), present


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
  assert search.choose(cands, amplitudes, rule="best_fom") == 0
  chosen = search.choose(cands, amplitudes, rule="most_symmetric")
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
  assert search.choose(cands, amplitudes, rule="most_symmetric") == 0
  assert cands[0].fom == 0.9 and cands[1].fom == 0.3
  # A network solution with an agreeing dual-space run: the run stands for it
  # (it phases every measured reflection, the network only its list).
  cands.append(_candidate(std, f_obs, _shifted(true, 40), "run", "dual_space", 0.6,
                          origin_cc=0.97))
  assert search.choose(cands, amplitudes, rule="most_symmetric") == 2
  assert cands[2].fom == 0.9
  with pytest.raises(ValueError):
    search.choose(cands, amplitudes, rule="first")


def test_an_atom_model_is_not_replaced_by_an_agreeing_run_that_predicts_worse():
  """A non-decisive atom model with the best held-out correlation keeps its
  own phases when the one dual-space run that agrees with it (a few signs
  off) predicts held-out amplitudes worse."""
  std, fc, f_obs, amplitudes = _case()
  true = fc.phases(deg=True)
  model = _candidate(std, f_obs, true, "atom model 1", "atom_search", 0.05)
  model.terms.update(held_out_cc=0.91, skewness=1.2)
  run = _candidate(std, f_obs, _shifted(true, 40), "omit-refined atom model 1", "dual_space",
                   0.05, origin_cc=0.98)
  run.terms.update(held_out_cc=0.87, skewness=1.4)
  assert search.agreement(model, run, amplitudes) > search.AGREEMENT_R
  assert search.choose([model, run], amplitudes, f_obs, std) == 0
  # A run that predicts better is the top itself, and chosen.
  run.terms["held_out_cc"] = 0.95
  assert search.choose([model, run], amplitudes, f_obs, std) == 1


def _moved(phases, shift):
  """Phases of the structure moved by ``shift`` (fractional): phi + 360 h.t."""
  h = np.array(phases.indices(), dtype=float).reshape(-1, 3)
  return phases.customized_copy(
    data=phases.data() + flex.double(360.0 * h @ np.asarray(shift, dtype=float)))


def _r(std, fc, f_obs, phases):
  truth = benchmark.Truth(std, fc)
  return truth.r(search.list_signs(std, f_obs, phases),
                 benchmark.measured_on_list(std, f_obs))


def test_the_consensus_of_one_solution_at_several_origins_is_nearer_the_truth():
  std, fc, f_obs, _ = _case()
  true = fc.phases(deg=True)
  # Three runs, each wrong on a different third of every seventh reflection,
  # two of them at another permissible origin.
  runs = []
  for k, shift in ((0, (0, 0, 0)), (3, (0.5, 0, 0.5)), (5, (0, 0.5, 0.5))):
    flipped = flex.double([180.0 if i % 7 == k else 0.0 for i in range(true.size())])
    runs.append(_candidate(std, f_obs, _moved(true.customized_copy(data=true.data() + flipped), shift),
                           "run %d" % k, "dual_space", 0.5, origin_cc=0.99))
  r_runs = [_r(std, fc, f_obs, c.phases) for c in runs]
  assert max(r_runs) < 0.9
  phases = search.consensus(runs, f_obs)
  assert _r(std, fc, f_obs, phases) > 0.999
  # A run that ended twice outweighs one other.
  runs[1].count = 2
  phases = search.consensus(runs[:2], f_obs)
  assert _r(std, fc, f_obs, phases) == pytest.approx(r_runs[1], abs=1e-6)
  # A run whose map fits the symmetry much worse counts less: the two others,
  # each wrong where the third is right, no longer outvote it.
  runs[1].count = 1
  runs[0].terms["origin_cc"] = runs[1].terms["origin_cc"] = 0.95
  phases = search.consensus([runs[2], runs[0], runs[1]], f_obs)
  assert _r(std, fc, f_obs, phases) == pytest.approx(r_runs[2], abs=1e-6)


def test_choose_with_the_data_appends_the_consensus():
  std, fc, f_obs, amplitudes = _case()
  true = fc.phases(deg=True)
  cands = [_candidate(std, f_obs, _shifted(true, 40), "a", "dual_space", 0.9, origin_cc=0.99),
           _candidate(std, f_obs, _moved(_shifted(true, 41), (0.5, 0.5, 0.5)), "b",
                      "dual_space", 0.6, origin_cc=0.99),
           _candidate(std, f_obs, _moved(_shifted(true, 43), (0, 0.5, 0)), "c",
                      "dual_space", 0.5, origin_cc=0.99),
           _candidate(std, f_obs, _shifted(true, 2), "other", "dual_space", 0.3, origin_cc=1.0)]
  chosen = search.choose(cands, amplitudes, f_obs, std)
  assert chosen == 4 and len(cands) == 5
  assert cands[4].label == "consensus of 3 dual-space runs"
  assert cands[4].fom == 0.9 and cands[4].start == "a"
  assert max(_r(std, fc, f_obs, c.phases) for c in cands[:3]) < 0.99
  assert _r(std, fc, f_obs, cands[4].phases) > 0.99


def test_a_consensus_that_predicts_held_out_amplitudes_worse_is_not_kept():
  """Runs that share one set of wrong signs outvote the right run that
  picked the solution; given the problem, choose keeps the right run
  itself, as its held-out correlation is the better one."""
  std, fc, f_obs, amplitudes = _case()
  true = fc.phases(deg=True)
  problem = dual_space.P1Problem(f_obs)
  # Near it: a fifth of the signs wrong, among the weaker reflections.
  f = abs(fc).data().as_numpy_array()
  weak = f < np.percentile(f, 40)
  flipped = flex.double([180.0 if weak[i] and i % 2 == 0 else 0.0 for i in range(true.size())])
  near = true.customized_copy(data=true.data() + flipped)
  cands = [_candidate(std, f_obs, true, "right", "dual_space", 0.5, origin_cc=0.99),
           _candidate(std, f_obs, near, "near 1", "dual_space", 0.4, origin_cc=0.99),
           _candidate(std, f_obs, near, "near 2", "dual_space", 0.4, origin_cc=0.99)]
  assert search.agreement(cands[0], cands[1], amplitudes) > search.AGREEMENT_R
  cands[1].count = cands[2].count = 3
  cands[0].terms["held_out_cc"] = float(
    dual_space.held_out_cc(problem, problem.phases_from(true)[None])[0])
  cands[1].terms["held_out_cc"] = cands[2].terms["held_out_cc"] = 0.0
  merged = list(cands)
  assert search.choose(merged, amplitudes, f_obs, std) == 3
  assert _r(std, fc, f_obs, merged[3].phases) < 0.99
  kept = list(cands)
  assert search.choose(kept, amplitudes, f_obs, std, problem=problem) == 0
  assert len(kept) == 3
  # A consensus that predicts as well is kept, with its own map terms.
  agreeing = [cands[0], _candidate(std, f_obs, _moved(true, (0.5, 0, 0.5)), "right 2",
                                   "dual_space", 0.4, origin_cc=0.99)]
  assert search.choose(agreeing, amplitudes, f_obs, std, problem=problem) == 2
  assert agreeing[2].terms["held_out_cc"] == pytest.approx(cands[0].terms["held_out_cc"], abs=1e-6)
  assert "r1" in agreeing[2].terms


def test_more_random_starts_run_in_rounds_until_the_budget():
  std, fc, f_obs, amplitudes = _case()
  present = amplitudes > 0
  settings = search.SearchSettings(method="dual_space", starts=2, more_starts=5,
                                   sign_combinations=0,
                                   dual_space=dual_space.Settings(cycles=3, min_cycles=1,
                                                                  polish_cycles=2))
  found = search.run(f_obs, std, amplitudes, present, None, settings)
  assert found.stages == ["dual-space from random phases",
                          "dual-space from 2 more random phases",
                          "dual-space from 4 more random phases",
                          "dual-space from 5 more random phases"]
  runs = [c for c in found.candidates if c.independent]
  assert [c.label for c in runs] == ["dual-space random %d" % (i + 1) for i in range(7)]
  # The rounds' starts are new random phases, not the first round's again.
  assert len({c.signs.tobytes() for c in runs}) > 2
  # A search that solves in its first round stops there.
  solved = search.run(f_obs, std, amplitudes, present, None, search.SearchSettings(
    method="dual_space", starts=4, more_starts=8, stop_fom=0.0))
  assert solved.stages == ["dual-space from random phases"]


def test_the_time_limit_counts_dual_space_work_not_a_clock(monkeypatch):
  std, fc, f_obs, amplitudes = _case()
  settings = search.SearchSettings(method="dual_space", starts=2, more_starts=4,
                                   sign_combinations=0, time_limit=120.0,
                                   dual_space=dual_space.Settings(cycles=3, min_cycles=1,
                                                                  polish_cycles=2))
  # Every map transformed, either way, counts its grid points.
  problem = dual_space.P1Problem(f_obs)
  n = int(np.prod(problem.n_real))
  rho = problem.density(np.ones((3, problem.size + problem.n_free), complex))
  assert problem.grid_points == 3 * n
  problem.structure_factors(rho[:2])
  assert problem.grid_points == 5 * n
  assert search.work_seconds(problem) == 5 * n / search.GRID_POINTS_PER_SECOND
  # The limit is read from that count: a core that does one grid point a
  # second ends the rounds of random starts after the first stage, one
  # infinitely fast does not; a clock that runs 1000 s a call changes nothing.
  import time
  ticks = iter(range(0, 10 ** 6, 1000))
  monkeypatch.setattr(time, "thread_time", lambda: float(next(ticks)))
  monkeypatch.setattr(search, "GRID_POINTS_PER_SECOND", 1.0)
  slow = search.run(f_obs, std, amplitudes, amplitudes > 0, None, settings)
  assert slow.stages == ["dual-space from random phases"]
  assert search.work_seconds(slow.problem) > settings.time_limit
  monkeypatch.setattr(search, "GRID_POINTS_PER_SECOND", float("inf"))
  fast = search.run(f_obs, std, amplitudes, amplitudes > 0, None, settings)
  assert fast.stages[-1] == "dual-space from 4 more random phases"
  # The same work, the same search.
  again = search.run(f_obs, std, amplitudes, amplitudes > 0, None, settings)
  assert again.problem.grid_points == fast.problem.grid_points > slow.problem.grid_points
  assert [c.label for c in again.candidates] == [c.label for c in fast.candidates]


def test_the_candidate_that_predicts_held_out_amplitudes_picks_the_solution():
  """Two wrong runs that agree (the higher figure of merit) lose to a right
  one that predicts held-out amplitudes better; the best figure of merit
  picks under the other rules."""
  std, fc, f_obs, amplitudes = _case()
  true = fc.phases(deg=True)
  wrong = _shifted(true, 2)
  cands = [_candidate(std, f_obs, wrong, "wrong 1", "dual_space", 0.9, origin_cc=0.99),
           _candidate(std, f_obs, wrong, "wrong 2", "dual_space", 0.9, origin_cc=0.99),
           _candidate(std, f_obs, true, "right", "dual_space", 0.2, origin_cc=0.99)]
  cands[0].terms["held_out_cc"] = cands[1].terms["held_out_cc"] = 0.4
  cands[2].terms["held_out_cc"] = 0.9
  assert search.top_candidate(cands) == 2
  assert search.top_candidate(cands, "consensus") == 0
  chosen = search.choose(list(cands), amplitudes, f_obs, std)
  assert chosen == 2 and cands[2].fom == 0.2
  assert search.choose(list(cands), amplitudes, f_obs, std, rule="best_fom") == 0
  with pytest.raises(ValueError):
    search.choose(list(cands), amplitudes, f_obs, std, rule="nearest")


def test_a_map_with_negative_skewness_does_not_pick_the_solution():
  """The inverted map of the true phases (every phase moved by 180 degrees)
  has negative skewness by its own map terms; with the better held-out
  correlation it still loses to the right phases, and picks only when
  every candidate's map is like it."""
  std, fc, f_obs, amplitudes = _case()
  problem = dual_space.P1Problem(f_obs)
  true = fc.phases(deg=True)
  inverted = true.customized_copy(data=true.data() + 180.0)
  right = _candidate(std, f_obs, true, "right", "dual_space", 0.5, origin_cc=0.99)
  wrong = _candidate(std, f_obs, inverted, "inverted", "dual_space", 0.5, origin_cc=0.99)
  right.terms.update(search.map_terms(problem, true))
  wrong.terms.update(search.map_terms(problem, inverted))
  assert right.terms["skewness"] > 0 > wrong.terms["skewness"]
  wrong.terms["held_out_cc"] = right.terms["held_out_cc"] + 0.1
  assert search.top_candidate([wrong, right]) == 1
  assert search.top_candidate([right, wrong]) == 0
  other = _candidate(std, f_obs, _shifted(inverted, 3), "other", "dual_space", 0.5)
  other.terms.update({"skewness": -0.5, "held_out_cc": wrong.terms["held_out_cc"] - 0.2})
  assert search.top_candidate([other, wrong]) == 1


STRONTIANITE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "structures",
                            "supergroups", "BobHanson_Strontianite.cif")


def _calculated(path, d_min):
  """Amplitudes calculated from a structure CIF at ``d_min``, and a function
  that gives the paper's r of a :func:`phai_cctbx.solve.solve` result."""
  xs = benchmark.read_structure(path)
  f_calc = benchmark.structure_factors(xs, d_min)
  f_obs = f_calc.as_amplitude_array()

  def r_of(result):
    std = result.standardisation
    truth = benchmark.Truth(std, f_calc)
    return truth.r(search.list_signs(std, result.f_obs, result.phases),
                   benchmark.measured_on_list(std, f_obs))
  return f_obs, r_of


@pytest.mark.skipif(not os.path.isfile(STRONTIANITE), reason="development structures not present")
def test_strontianite_at_2_angstrom_is_solved_past_its_inverted_map(monkeypatch):
  """Real data where the rule decides: dual-space phasing of Strontianite's
  calculated 2.0 A amplitudes (Pmcn, phased as its P2_1/c subgroup) has a
  map of negative skewness with the best held-out correlation (r 0.23);
  with the rule the answer that random starts and sign combinations reach
  is chosen, and called solved."""
  import io
  from phai_cctbx import solve
  f_obs, r_of = _calculated(STRONTIANITE, 2.0)
  result = solve.solve(f_obs, method="dual_space", log=io.StringIO(),
                       guess_composition=False)   # the choice among dual-space maps
  assert r_of(result) > 0.95 and result.chosen.terms["skewness"] > 0
  assert result.verdict in ("solved", "probably solved")
  monkeypatch.setattr(search, "skewed", lambda c: True)
  assert r_of(solve.solve(f_obs, method="dual_space", log=io.StringIO(),
                          guess_composition=False)) < 0.5


def test_the_held_out_correlation_is_computed_once_per_solution(monkeypatch):
  std, fc, f_obs, amplitudes = _case()
  true = fc.phases(deg=True)
  problem = dual_space.P1Problem(f_obs)
  batches = []
  real = dual_space.held_out_cc

  def counting(problem, p1_phases, **kw):
    batches.append(len(p1_phases))
    return real(problem, p1_phases, **kw)

  monkeypatch.setattr(dual_space, "held_out_cc", counting)
  cands = [_candidate(std, f_obs, true, "a", "dual_space", 0.0),
           _candidate(std, f_obs, _moved(true, (0.5, 0, 0.5)), "a moved", "dual_space", 0.0),
           _candidate(std, f_obs, _shifted(true, 2), "other", "dual_space", 0.0)]
  search.assess(cands, problem, amplitudes)
  assert batches == [2]
  assert cands[1].terms["held_out_cc"] == cands[0].terms["held_out_cc"]
  assert cands[0].terms["held_out_cc"] > cands[2].terms["held_out_cc"] + 0.2
  # A later stage's candidate of a solution already assessed costs nothing.
  cands.append(_candidate(std, f_obs, true, "a again", "dual_space", 0.0))
  search.assess(cands, problem, amplitudes)
  assert batches == [2] and cands[3].terms["held_out_cc"] == cands[0].terms["held_out_cc"]


def test_partial_seeds_keep_the_most_confident_strong_phases_of_a_trial():
  std, fc, f_obs, amplitudes = _case()
  problem = dual_space.P1Problem(f_obs)
  true = fc.phases(deg=True)
  # A "network trial": the true phases, confident on every third reflection.
  confidence = true.customized_copy(
    data=flex.double([1.0 if i % 3 == 0 else 0.1 for i in range(true.size())]))
  back = symmetry.BackTransform(true, confidence, 0, 0, true.size())
  trial = _candidate(std, f_obs, true, "network trial 1", "network", 0.5)
  trial.back = back
  starts, labels, origins = search.partial_seeds(problem, [trial], (0.2, 0.5),
                                                 np.random.default_rng(0))
  assert origins[:2] == ["network trial 1", "network trial 1, others random"]
  assert starts.shape == (4, problem.size)
  assert labels[0] == "dual-space from 20 % of network trial 1"
  assert labels[3].endswith("others random")
  p1_true = problem.phases_from(true)
  conf = search.p1_confidence(problem, back)
  for row, fraction in zip(range(0, 4, 2), (0.2, 0.5)):
    kept = ~np.isnan(starts[row])
    assert kept.sum() == int(fraction * problem.size)
    # Kept: the trial's own phases, of the most confident (times |E|).
    assert np.allclose(starts[row][kept], p1_true[kept])
    assert (conf[kept] * problem.e[kept]).min() >= (conf[~kept] * problem.e[~kept]).max()
    # The second start of a pair fills the others at random.
    assert not np.isnan(starts[row + 1]).any()
    assert np.allclose(starts[row + 1][kept], p1_true[kept])
    assert not np.allclose(np.cos(starts[row + 1][~kept]), np.cos(p1_true[~kept]))
  # The 20 % seeds are the most trusted part of the 50 % ones.
  assert not (~np.isnan(starts[0]) & np.isnan(starts[2])).any()


def test_the_search_computes_the_held_out_correlation_with_its_settings_cycles(monkeypatch):
  std, fc, f_obs, amplitudes = _case()
  present = amplitudes > 0
  cycles = []
  real = dual_space.held_out_cc

  def recording(problem, p1_phases, **kw):
    cycles.append(kw.get("cycles"))
    return real(problem, p1_phases, **kw)

  monkeypatch.setattr(dual_space, "held_out_cc", recording)
  settings = search.SearchSettings(method="dual_space", starts=3, more_starts=0,
                                   dual_space=dual_space.Settings(
                                     cycles=3, min_cycles=1, polish_cycles=2,
                                     held_out_cycles=4))
  found = search.run(f_obs, std, amplitudes, present, None, settings)
  assert cycles and set(cycles) == {4}
  # Fewer cycles give other values: the setting is not ignored downstream.
  p1 = np.stack([found.problem.phases_from(c.phases) for c in found.candidates[:1]])
  assert real(found.problem, p1, cycles=4)[0] == pytest.approx(
    found.candidates[0].terms["held_out_cc"], abs=1e-9)
  assert real(found.problem, p1, cycles=4)[0] != pytest.approx(
    real(found.problem, p1, cycles=30)[0], abs=1e-6)


def test_starts_flip_longer_and_with_more_patience_at_atomic_resolution(monkeypatch):
  """At 1.0 A every random start of the search gets five times the
  settings' cycles and patience (a larger cell's flipping wanders longer
  before it finds the structure); at 1.6 A the settings as given."""
  std, fc, f_obs, amplitudes = _case()
  used = []
  real = dual_space.run

  def recording(f, starts, settings, **kw):
    used.append((len(starts), settings.cycles, settings.patience))
    return real(f, starts, settings, **kw)

  monkeypatch.setattr(dual_space, "run", recording)
  given = dual_space.Settings(cycles=4, min_cycles=1, patience=2, polish_cycles=2,
                              held_out_cycles=2)
  settings = search.SearchSettings(method="dual_space", starts=2, more_starts=3,
                                   dual_space=given, stop_fom=None)
  k = dual_space.ATOMIC_RESOLUTION_FACTOR
  assert k > 1
  search.run(f_obs, std, amplitudes, amplitudes > 0, None, settings)
  assert used == [(2, 4 * k, 2 * k), (2, 4 * k, 2 * k), (1, 4 * k, 2 * k)]
  del used[:]
  coarse, coarse_amplitudes, present = _at(f_obs, std, 1.6)
  search.run(coarse, std, coarse_amplitudes, present, None,
             dataclasses.replace(settings, sign_combinations=0, omit_refinement=0))
  assert used[:3] == [(2, 4, 2), (2, 4, 2), (1, 4, 2)]
  assert {u[1:] for u in used} == {(4, 2)}
  # The settings the caller gave are left as they were.
  assert (given.cycles, given.patience) == (4, 2)


def test_sign_combinations_start_refined_and_flipped_runs_after_the_random_ones():
  """With sign_combinations=k, when the random starts are not called solved,
  2^k starts from the strongest signs run twice (low-density elimination
  alone, and charge flipping), none of them counted as independent."""
  std, fc, f_atomic, _ = _case()
  f_obs, amplitudes, present = _at(f_atomic, std, 1.6)
  settings = search.SearchSettings(method="dual_space", starts=2, more_starts=0,
                                   sign_combinations=3, stop_fom=1.1, omit_refinement=0,
                                   dual_space=dual_space.Settings(cycles=5, min_cycles=1))
  found = search.run(f_obs, std, amplitudes, present, None, settings)
  assert found.stages == ["dual-space from random phases",
                          "dual-space from 8 sign combinations"]
  combos = [c for c in found.candidates if "sign combination" in c.label]
  assert len(combos) == 16 and not any(c.independent for c in combos)
  assert sum(c.label.startswith("refined") for c in combos) == 8
  assert all(c.phases.size() == f_obs.size() for c in combos)
  # Eight different starts end in more than one place.
  assert len({c.signs.tobytes() for c in combos if c.label.startswith("refined")}) > 1
  # Called solved by the random starts: no sign combinations.
  early = search.run(f_obs, std, amplitudes, present, None, dataclasses.replace(
    settings, stop_fom=0.0))
  assert early.stages == ["dual-space from random phases"]
  # At atomic resolution random starts suffice: no sign combinations.
  std, fc, f_atomic, amplitudes = _case()
  atomic = search.run(f_atomic, std, amplitudes, amplitudes > 0, None, settings)
  assert atomic.stages == ["dual-space from random phases"]
  assert search.runs_sign_combinations(settings, f_obs)
  assert not search.runs_sign_combinations(settings, f_atomic)
  assert not search.runs_sign_combinations(dataclasses.replace(settings, method="network"), f_obs)


def test_the_network_in_other_frames_gives_candidates_on_the_main_list(monkeypatch):
  """Trials made in another frame of the crystal (here: the true signs there,
  in place of the network) come back as candidates in the data's group whose
  signs on the preferred frame's list are the true ones."""
  from phai_cctbx import phasing
  xs = random_structure.xray_structure(
    space_group_info=sgtbx.space_group_info("P b c a"), unit_cell=(7.1, 8.2, 9.3, 90, 90, 90),
    elements=["C"] * 4 + ["O"] * 2, use_u_iso=True, u_iso=0.02, random_u_iso=False,
    random_f_prime_d_min=0, min_distance=1.2)
  fc = benchmark.structure_factors(xs, 1.2)
  f_obs = abs(fc).set_observation_type_xray_amplitude()
  std = symmetry.prepare(f_obs.crystal_symmetry())
  # The three P2_1/c subgroups, each in its shortest cell; every other cell
  # of theirs has an edge above 10.5 A (e.g. a + c, 11.7 A).
  longest = lambda f: max(f.p21c_symmetry.unit_cell().parameters()[:3])
  all_frames = symmetry.frames(f_obs.crystal_symmetry())
  assert sum(longest(f) <= 10.5 for f in all_frames) == 3 < len(all_frames)
  others = search.other_frames(std, 100)
  assert len(others) == 2
  assert all(o.cb_op.as_xyz() != std.cb_op.as_xyz() for o in others)
  b_axes = sorted(round(o.p21c_symmetry.unit_cell().parameters()[1], 2) for o in others + [std])
  assert b_axes == [7.1, 8.2, 9.3]   # each of the three 2_1 axes in its turn
  assert len(search.other_frames(std, 1)) == 1 and search.other_frames(std, 0) == []
  truth = benchmark.Truth(std, fc)
  measured = benchmark.measured_on_list(std, f_obs)
  seen = []

  def true_signs_in_frame(amplitudes, measured_, model, trials, cycles, random_seed):
    frame = others[len(seen)]
    seen.append(random_seed)
    values, present = frame.map_to_reflection_set(fc)
    signs = np.where(np.asarray(values).real < 0, -1.0, 1.0)
    flipped = signs * np.where(np.arange(signs.size) % 2 == 0, -1.0, 1.0)
    return phasing.PhasingResult(
      signs=np.stack([signs, flipped]), probabilities=np.ones((2, signs.size)),
      fom=np.array([0.9, 0.1]), fom_terms={}, cycles_run=np.ones(2, int),
      converged=np.ones(2, bool), history=None, best=0, verdict="", seconds=0.0)

  monkeypatch.setattr(phasing, "phase_reflection_set", true_signs_in_frame)
  settings = search.SearchSettings(trials=2, random_seed=5)
  for k, frame in enumerate(others):
    cands = search._frame_candidates(frame, k + 2, std, f_obs, None, settings)
    assert [c.label for c in cands] == ["network frame %d trial %d" % (k + 2, t) for t in (1, 2)]
    assert truth.r(cands[0].signs, measured) > 0.999
    assert truth.r(cands[1].signs, measured) < 0.9
    assert cands[0].terms["network_fom"] == 0.9
    assert set(np.unique(cands[0].weights)) <= {0.0, 1.0}
    fm, pm = f_obs.common_sets(cands[0].phases)
    assert pm.size() > 0.5 * f_obs.size()
  assert seen == [6, 7]


def test_the_search_runs_the_network_in_as_many_frames_as_asked(monkeypatch):
  from phai_cctbx import phasing
  std, fc, f_obs, amplitudes = _case()
  calls = []

  def random_signs(amplitudes_, measured_, model, trials, cycles, random_seed, **kw):
    calls.append(random_seed)
    signs = np.random.default_rng(random_seed).choice([-1.0, 1.0], size=(trials, amplitudes_.size))
    return phasing.PhasingResult(
      signs=signs, probabilities=np.full(signs.shape, 0.6), fom=np.linspace(0.5, 0.1, trials),
      fom_terms={}, cycles_run=np.ones(trials, int), converged=np.zeros(trials, bool),
      history=None, best=0, verdict="", seconds=0.0)

  monkeypatch.setattr(phasing, "phase_reflection_set", random_signs)
  present = np.asarray(std.map_to_reflection_set(f_obs)[1], dtype=bool)
  labels = {}
  for frames in (1, 3):
    calls.clear()
    found = search.run(f_obs, std, amplitudes, present, model=object(),
                       settings=search.SearchSettings(method="network", trials=2,
                                                      network_frames=frames, random_seed=4))
    labels[frames] = [c.label for c in found.candidates]
    assert calls == [4 + k for k in range(frames)]
  assert labels[1] == ["network trial 1", "network trial 2"]
  assert labels[3][:2] == labels[1]
  assert [l for l in labels[3] if "frame" in l] == [
    "network frame %d trial %d" % (k, t) for k in (2, 3) for t in (1, 2)]


def test_snapshots_of_random_starts_are_candidates_but_not_independent():
  std, fc, f_obs, amplitudes = _case()
  present = np.asarray(std.map_to_reflection_set(f_obs)[1], dtype=bool)
  engine = dual_space.Settings(cycles=40, min_cycles=20, polish_cycles=20)
  found = search.run(f_obs, std, amplitudes, present, model=None, settings=search.SearchSettings(
    method="dual_space", starts=2, more_starts=0, sign_combinations=0, snapshots=(5, 10),
    dual_space=engine))
  runs = [c for c in found.candidates if not c.label.startswith("consensus")]
  assert [c.label for c in runs] == [
    "dual-space random 1", "dual-space random 2",
    "dual-space random 1 after 5 cycles", "dual-space random 2 after 5 cycles",
    "dual-space random 1 after 10 cycles", "dual-space random 2 after 10 cycles"]
  assert [c.independent for c in runs] == [True, True, False, False, False, False]
  assert all(c.start == "random" for c in runs)
  assert [c.snapshot_of for c in runs[2:]] == [runs[0], runs[1], runs[0], runs[1]]
  # The agreement counts the other independent starts only: one end point.
  assert all(c.terms["agreement"] in (0.0, 1.0) for c in runs)
  for c in runs[2:]:
    other = runs[1] if c.snapshot_of is runs[0] else runs[0]
    assert c.terms["agreement"] == float(search.agreement(c, other, amplitudes) > search.AGREEMENT_R)
  none = search.run(f_obs, std, amplitudes, present, model=None, settings=search.SearchSettings(
    method="dual_space", starts=2, more_starts=0, sign_combinations=0, snapshots=(),
    dual_space=engine))
  assert len([c for c in none.candidates if not c.label.startswith("consensus")]) == 2


def test_the_best_distinct_candidates_by_held_out_correlation():
  """Omit-map refinement's sources: the best held-out correlation first,
  one candidate per solution (the same phases at another origin is the same
  solution), skewed maps before the others, unassessed candidates left out."""
  std, fc, f_obs, amplitudes = _case()
  true = fc.phases(deg=True)

  def cand(label, phases, held_out_cc, skewness=1.0):
    c = _candidate(std, f_obs, phases, label, "dual_space", 0.0)
    c.terms.update(held_out_cc=held_out_cc, skewness=skewness)
    return c

  right = cand("right", true, 0.9)
  moved = cand("right moved", _moved(true, (0.5, 0, 0.5)), 0.95)
  other = cand("other", _shifted(true, 2), 0.5)
  inverted = cand("inverted", _shifted(true, 3), 0.99, skewness=-1.0)
  unassessed = _candidate(std, f_obs, _shifted(true, 5), "new", "dual_space", 0.0)
  pool = [right, other, moved, inverted, unassessed]
  assert [c.label for c in search.best_distinct(pool, amplitudes, 4)] == [
    "right moved", "other", "inverted"]
  assert [c.label for c in search.best_distinct(pool, amplitudes, 1)] == ["right moved"]
  assert search.best_distinct(pool, amplitudes, 0) == []


def test_omit_refinement_runs_last_below_atomic_resolution_while_unsolved():
  """With omit_refinement=k, a search below atomic resolution that calls
  nothing solved ends with k more candidates, one refined by omit maps from
  each of the k best distinct ones, assessed like every other and not
  counted as independent; none when a stage called the data solved, at
  atomic resolution, or with omit_refinement=0."""
  std, fc, f_atomic, _ = _case()
  f_obs, amplitudes, present = _at(f_atomic, std, 1.6)
  settings = search.SearchSettings(method="dual_space", starts=3, more_starts=0,
                                   sign_combinations=0, stop_fom=1.1, omit_refinement=2,
                                   dual_space=dual_space.Settings(cycles=5, min_cycles=1,
                                                                  polish_cycles=2))
  found = search.run(f_obs, std, amplitudes, present, None, settings)
  assert found.stages == ["dual-space from random phases", "omit-map refinement (2)"]
  omitted = [c for c in found.candidates if c.label.startswith("omit-refined")]
  sources = search.best_distinct(found.candidates[:3], np.where(present, amplitudes, 0), 2)
  assert [c.label for c in omitted] == ["omit-refined " + c.label for c in sources]
  assert [c.start for c in omitted] == [c.label for c in sources]
  for c in omitted:
    assert not c.independent and c.phases.size() == f_obs.size()
    assert {"held_out_cc", "r1", "skewness", "agreement", "origin_cc"} <= set(c.terms)
  for changed in (dict(stop_fom=0.0), dict(omit_refinement=0)):
    other = search.run(f_obs, std, amplitudes, present, None,
                       dataclasses.replace(settings, **changed))
    assert not any("omit" in stage for stage in other.stages), changed
  atomic = search.run(f_atomic, std, amplitudes, present, None, settings)
  assert not any("omit" in stage for stage in atomic.stages)
  assert search.runs_omit_refinement(settings, f_obs)
  assert not search.runs_omit_refinement(settings, f_atomic)
  assert not search.runs_omit_refinement(dataclasses.replace(settings, omit_refinement=0), f_obs)
  assert not search.runs_omit_refinement(dataclasses.replace(settings, method="network"), f_obs)


SCORZALITE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "structures",
                          "p21c_small", "BobHanson_Scorzalite.cif")


@pytest.mark.skipif(not os.path.isfile(SCORZALITE), reason="shared structures not present")
def test_scorzalite_at_1_6_angstrom_is_solved_by_omit_maps():
  """Real data where omit maps decide: phai.solve's search of Scorzalite's
  calculated 1.6 A amplitudes (FeAl2(PO4)2(OH)2, P2_1/c) ends at r 0.72
  without them; with them a near-solution (r 0.93) is refined to r > 0.95
  and chosen."""
  import io
  from phai_cctbx import solve
  f_obs, r_of = _calculated(SCORZALITE, 1.6)
  # No composition and no guessed atom search: the omit maps' own test.
  result = solve.solve(f_obs, log=io.StringIO(), guess_composition=False)
  assert r_of(result) > 0.95
  # Picked by an omit-refined candidate (its phases: the consensus of the
  # runs that agree with it), refined from a candidate that was not solved.
  picked = result.chosen
  refined = picked if picked.label.startswith("omit-refined") else None
  by_label = dict((c.label, c) for c in result.search.candidates)
  if refined is None:
    assert picked.start.startswith("omit-refined"), picked.start
    refined = by_label[picked.start]
  xs = benchmark.read_structure(SCORZALITE)
  truth = benchmark.Truth(result.standardisation, benchmark.structure_factors(xs, 1.6))
  measured = benchmark.measured_on_list(result.standardisation, f_obs)
  assert truth.r(refined.signs, measured) > 0.95
  assert truth.r(by_label[refined.start].signs, measured) < 0.95


def test_a_second_atom_search_runs_only_where_none_is_decisive(monkeypatch):
  """Where the first atom search ends without a decisive model, a second
  from other random placements runs and the models of both are judged
  together: its deeper right minimum becomes decisive.  A decisive first
  search, or retry off, runs one search."""
  from test_composition_guess import _agreeing_models, _tiny_problem
  f_obs, std, weights, phases = _tiny_problem()
  p = phases.data().as_numpy_array()
  flipped = lambda every: phases.customized_copy(
    data=flex.double(np.where(np.arange(p.size) % every == 0, p + 180.0, p)))
  # The first search: two wrong solutions of nearly the same R1 (1000193 at
  # 2.0 A: R1 0.181); the second: the right model, R1 0.058.
  first = _agreeing_models(flipped(2), 0.181) + _agreeing_models(flipped(3), 0.19)
  second = _agreeing_models(phases, 0.058)
  seeds = []

  def run(f, counts, restarts=2048, seed=0, keep=16, **kw):
    seeds.append(seed)
    return first if seed == 7 else second

  monkeypatch.setattr(search.atom_search_engine, "run", run)
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1", lambda f, m: m.r1 + 0.02)
  s = search.SearchSettings(random_seed=7)
  kept, searches = search._atom_candidates(f_obs, {"C": 8}, std, weights, s, retry=True)
  assert searches == 2 and seeds == [7, 7 + search.ATOM_RETRY_SEED]
  assert kept[0].terms.get("decisive") and kept[0].terms["model_r1"] == pytest.approx(0.058)
  assert len(kept) == 3   # the first search's solutions still compete
  seeds.clear()
  kept, searches = search._atom_candidates(f_obs, {"C": 8}, std, weights, s, retry=False)
  assert searches == 1 and seeds == [7] and not kept[0].terms.get("decisive")
  seeds.clear()
  s = search.SearchSettings(random_seed=3)   # the right model at once
  kept, searches = search._atom_candidates(f_obs, {"C": 8}, std, weights, s, retry=True)
  assert searches == 1 and seeds == [3] and kept[0].terms.get("decisive")


def _right_and_wrong_phases():
  """(f_obs, standardisation, weights, phases, wrong phases) of a tiny cell:
  the right phases and a set with every other one flipped."""
  from test_composition_guess import _tiny_problem
  f_obs, std, weights, phases = _tiny_problem()
  p = phases.data().as_numpy_array()
  wrong = phases.customized_copy(
    data=flex.double(np.where(np.arange(p.size) % 2 == 0, p + 180.0, p)))
  return f_obs, std, weights, phases, wrong


def test_a_given_composition_and_a_guess_of_unknown_atoms_get_a_second_atom_search():
  given, organic, unknown = {"Na": 24, "Al": 8}, {"C": 16}, {atom_search.UNKNOWN: 21}
  assert search.SearchSettings().retries_atom_search(given)
  assert not search.SearchSettings(atom_retry=False).retries_atom_search(given)
  guessed = search.SearchSettings(composition_guessed=True)
  assert not guessed.retries_atom_search(organic)
  assert not guessed.retries_atom_search({"C": 8, "S": 4})
  assert guessed.retries_atom_search(unknown)
  assert not search.SearchSettings(composition_guessed=True,
                                   atom_retry=False).retries_atom_search(unknown)


def test_a_guess_of_unknown_atoms_is_searched_again_where_its_model_is_not_decisive(
    monkeypatch):
  """The guesses in turn: the organic one searched once, the atoms of
  unknown element twice, the second search's right model decisive."""
  from test_composition_guess import _agreeing_models
  f_obs, std, weights, phases, wrong = _right_and_wrong_phases()
  runs = []

  def run(f, counts, restarts=2048, seed=0, keep=16, **kw):
    runs.append((sorted(counts), seed))
    element = next(iter(counts))
    if element == atom_search.UNKNOWN and seed != 5:
      return _agreeing_models(phases, 0.02, element=element)
    return _agreeing_models(wrong, 0.15, element=element) + \
      _agreeing_models(phases, 0.16, element=element)

  monkeypatch.setattr(search.atom_search_engine, "run", run)
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1", lambda f, m: m.r1 + 0.02)
  monkeypatch.setattr(search, "atom_search_atoms", lambda s, f, counts, limit=None: ((), ()))
  s = search.SearchSettings(random_seed=5, composition_guessed=True, time_limit=-1.0)
  organic, unknown = {"C": 16}, {atom_search.UNKNOWN: 16}
  found, tried, best, searches = search._alternative_atom_candidates(
    f_obs, [organic, unknown], std, weights, s)
  assert runs == [(["C"], 5), ([atom_search.UNKNOWN], 5),
                  ([atom_search.UNKNOWN], 5 + search.ATOM_RETRY_SEED)] and searches == 3
  assert tried == [organic, unknown] and best == unknown
  decisive = [c for c in found if c.terms.get("decisive")]
  assert len(decisive) == 1 and decisive[0].terms["model_r1"] == pytest.approx(0.02)


def test_a_formula_without_z_tries_its_other_number_of_formula_units(monkeypatch):
  """A formula given without Z: where the likeliest Z gives no decisive
  model (after its second search), the next Z is searched and its decisive
  model kept beside the first's; the labels name both compositions."""
  from test_composition_guess import _agreeing_models
  f_obs, std, weights, phases, wrong = _right_and_wrong_phases()
  runs = []

  def run(f, counts, restarts=2048, seed=0, keep=16, **kw):
    runs.append((counts["Si"], seed))
    if counts["Si"] == 8:   # too many atoms: two wrong models, neither stands out
      return _agreeing_models(wrong, 0.12) + _agreeing_models(phases, 0.125)
    return _agreeing_models(phases, 0.03)

  monkeypatch.setattr(search.atom_search_engine, "run", run)
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1", lambda f, m: m.r1 + 0.02)
  s = search.SearchSettings(random_seed=5, time_limit=-1.0)
  z8, z4 = {"Si": 8, "O": 16}, {"Si": 4, "O": 8}
  found, tried, best, searches = search._alternative_atom_candidates(
    f_obs, [z8, z4], std, weights, s)
  assert runs == [(8, 5), (8, 5 + search.ATOM_RETRY_SEED), (4, 5)] and searches == 3
  assert tried == [z8, z4] and best == z4
  assert found[0].label.startswith("atom model 1 (Si2 O4, R1")
  chosen = [c for c in found if c.terms.get("decisive")]
  assert len(chosen) == 1 and chosen[0].label.startswith("atom model 1 (Si1 O2, R1 0.030")
  # One composition: one search (no retry needed when decisive), no names.
  runs.clear()
  found, tried, best, searches = search._alternative_atom_candidates(
    f_obs, [z4], std, weights, s)
  assert runs == [(4, 5)] and searches == 1 and found[0].label.startswith("atom model 1 (R1")


WATER = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "experimental",
                     "water_P21c")


def test_a_given_molecule_beyond_the_sure_limit_is_searched_and_gets_heavy_atoms_of_unknown_element():
  """A given molecular composition of 17-20 atoms (COD 2008520's cell at
  2.0 A, 18 atoms) is placed by the random search and, where no model is
  decisive, by heavy atoms of unknown element too; a guessed one of that
  size is not searched (its count is uncertain), one of 16 gets no search
  of unknown atoms, one beyond 20 only those."""
  from cctbx import crystal
  symm = crystal.symmetry((12.75, 6.11, 14.87, 90, 99.5, 90), "P 1 21/c 1")
  indices = symm.build_miller_set(anomalous_flag=False, d_min=2.0)
  f_obs = indices.array(data=flex.double(indices.size(), 1.0)) \
    .set_observation_type_xray_amplitude()
  s = search.SearchSettings()
  guessed = dataclasses.replace(s, composition_guessed=True)
  eighteen = {"C": 52, "H": 48, "O": 20}
  assert len(search.atom_search_atoms(s, f_obs, eighteen)[0]) == 18
  assert search.atom_search_atoms(guessed, f_obs, eighteen) is None
  assert search.heavy_unknown_for_given(s, f_obs, eighteen)
  assert not search.heavy_unknown_for_given(guessed, f_obs, eighteen)
  assert not search.heavy_unknown_for_given(dataclasses.replace(s, heavy_atoms=False),
                                            f_obs, eighteen)
  sixteen = {"C": 48, "H": 40, "O": 16}
  assert len(search.atom_search_atoms(guessed, f_obs, sixteen)[0]) == 16
  assert not search.heavy_unknown_for_given(s, f_obs, sixteen)
  twenty_four = {"C": 80, "H": 64, "O": 16}
  assert search.atom_search_atoms(s, f_obs, twenty_four) is None
  assert search.peak_search_atoms(s, f_obs, twenty_four) is None
  assert search.heavy_unknown_for_given(s, f_obs, twenty_four)
  # Free atoms of an inorganic cell stay within 12, whatever the data.
  assert search.atom_search_atoms(s, f_obs, {"Na": 16, "O": 40}) is None
  # At 1.6 A (one reflection per 12 and more for 18 atoms) the search from
  # map peaks covers the 18 atoms by itself: no atoms of unknown element.
  fine = symm.build_miller_set(anomalous_flag=False, d_min=1.6)
  fine = fine.array(data=flex.double(fine.size(), 1.0)).set_observation_type_xray_amplitude()
  assert fine.size() // atom_search.PEAK_REFLECTIONS_PER_ATOM >= 18
  assert not search.heavy_unknown_for_given(s, fine, eighteen)
  # So does it cover an inorganic asymmetric unit of 14 atoms, which the
  # random search does not place: its maps' peaks, not atoms of unknown
  # element; at 2.0 A (fewer than 12 reflections per atom) not.
  sodium_oxide = {"Na": 16, "O": 40}
  assert atom_search.heavy_counts(sodium_oxide, f_obs.space_group()) is None
  assert fine.size() // atom_search.PEAK_REFLECTIONS_PER_ATOM >= 14 > \
    f_obs.size() // atom_search.PEAK_REFLECTIONS_PER_ATOM
  assert search.atom_search_atoms(s, fine, sodium_oxide) is None
  assert search.peak_search_atoms(s, fine, sodium_oxide)[0] == ("Na",) * 4 + ("O",) * 10
  assert not search.heavy_unknown_for_given(s, fine, sodium_oxide)
  assert search.peak_search_atoms(s, f_obs, sodium_oxide) is None
  assert search.heavy_unknown_for_given(s, f_obs, sodium_oxide)


def test_heavy_atoms_of_unknown_element_are_searched_only_below_atomic_resolution():
  """UHAWAD's cell (50 atoms in the asymmetric unit, beyond every search
  but the one of heavy atoms of unknown element): at 2.0 A that search
  runs, for its given composition and for a guess; at 1.0 A, where
  dual-space phasing solves such cells, for neither."""
  from cctbx import crystal
  symm = crystal.symmetry((13.49, 15.10, 16.07, 90, 69.58, 90), "P 1 21/n 1")
  s = search.SearchSettings()
  guessed = dataclasses.replace(s, composition_guessed=True)
  fifty = {"C": 112, "H": 96, "Cl": 8, "N": 24, "O": 56}
  for d_min, expected in ((2.0, True), (1.0, False)):
    indices = symm.build_miller_set(anomalous_flag=False, d_min=d_min)
    f_obs = indices.array(data=flex.double(indices.size(), 1.0)) \
      .set_observation_type_xray_amplitude()
    assert search.below_atomic_resolution(f_obs) == expected
    assert search.peak_search_atoms(s, f_obs, fifty) is None
    assert search.heavy_unknown_for_given(s, f_obs, fifty)
    assert search.runs_heavy_unknown(s, f_obs, fifty) == expected
    assert search.runs_heavy_unknown(guessed, f_obs, None) == expected
    assert not search.runs_heavy_unknown(dataclasses.replace(guessed, heavy_atoms=False),
                                         f_obs, None)


def test_heavy_atoms_are_searched_first_only_beyond_the_random_search():
  from cctbx import crystal
  symm = crystal.symmetry((9.0, 10.0, 11.0, 90, 100, 90), "P 1 21/c 1")
  indices = symm.build_miller_set(anomalous_flag=False, d_min=2.0)
  f_obs = indices.array(data=flex.double(indices.size(), 1.0)) \
    .set_observation_type_xray_amplitude()
  s = search.SearchSettings()
  water = {"C": 28, "H": 40, "Mn": 2, "N": 4, "O": 24, "S": 4}   # 15.5 atoms, 12 placed
  assert search.atom_search_atoms(s, f_obs, water) is None
  assert search.heavy_search_counts(s, f_obs, water) == {"Mn": 2, "S": 4}
  # Within the random search's limit: no heavy-atom stage.
  assert search.heavy_search_counts(s, f_obs, {"Mn": 4, "S": 4, "O": 16}) is None
  # Switched off, a guessed composition, or no composition.
  assert search.heavy_search_counts(
    dataclasses.replace(s, heavy_atoms=False), f_obs, water) is None
  assert search.heavy_search_counts(
    dataclasses.replace(s, composition_guessed=True), f_obs, water) is None
  assert search.heavy_search_counts(s, f_obs, None) is None
  # Beyond what the peak search places from these reflections.
  few = f_obs.resolution_filter(d_min=4.0)
  assert search.heavy_search_counts(s, few, water) is None


@pytest.mark.skipif(not os.path.isdir(WATER), reason="measured data not present")
def test_the_heavy_atoms_of_the_measured_water_set_lead_to_its_whole_model():
  """The measured water set at 2.0 A (C14 H20 Mn N2 O12 S2, Z = 2: 15.5
  atoms in the asymmetric unit, beyond the random atom search; 122
  reflections).  Its heavy atoms alone give a partial model (r about 0.86),
  never marked as a solution; the whole asymmetric unit placed from that
  model's map peaks gives the right phases, the best-fitting model."""
  from phai_cctbx import amplitudes, data_input
  xs = benchmark.read_structure(os.path.join(WATER, "water.cif"))
  data = data_input.read_data(os.path.join(WATER, "water.hkl"),
                              symmetry_file=os.path.join(WATER, "water.cif"))
  f_obs = amplitudes.prepare_amplitudes(data.miller_array).f_obs \
    .customized_copy(crystal_symmetry=xs.crystal_symmetry()).as_non_anomalous_array() \
    .resolution_filter(d_min=2.0)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  values, present = std.map_to_reflection_set(f_obs)
  weights = np.where(np.asarray(present, bool), np.maximum(np.asarray(values).real, 0), 0.0)
  truth = benchmark.Truth(std, benchmark.structure_factors(xs, 2.0))
  measured = benchmark.measured_on_list(std, f_obs)
  r = lambda c: truth.r(search.list_signs(std, f_obs, c.phases), measured)
  composition = benchmark.cell_composition(xs, f_obs)
  s = search.SearchSettings(atom_restarts=256, peak_maps=1)
  heavy = search.heavy_search_counts(s, f_obs, composition)
  found, n, pseudo = search._heavy_atom_candidates(f_obs, composition, heavy, std, weights, s)
  assert n == pytest.approx(1.5) and pseudo is None
  partial = [c for c in found if c.label.startswith("heavy-atom model")]
  assert partial and 0.75 < r(partial[0]) < 0.95
  assert not any(c.terms.get(k) for c in partial for k in ("decisive", "clear", "stands_out"))
  assert partial[0].model is None   # no model of the whole cell
  whole = [c for c in found if c.label.startswith("peak atom model")]
  assert whole[0].start == "heavy-atom map peaks" and whole[0].model is not None
  assert r(whole[0]) > 0.95, [(c.label, r(c)) for c in whole]


def _heavy_atom_structure(seed=3):
  """P2_1/c, twelve atoms in the asymmetric unit: one Pb and eleven C, N
  and O at random, all copies 1.4 A apart at least."""
  from cctbx import crystal, xray
  symm = crystal.symmetry((8.5, 9.0, 10.0, 90, 98, 90), "P 1 21/c 1")
  ops = [(np.array(op.r().as_double()).reshape(3, 3), np.array(op.t().as_double()))
         for op in symm.space_group()]
  orth = np.array(symm.unit_cell().orthogonalization_matrix()).reshape(3, 3)

  def apart(x, sites):
    for y in sites + [x]:
      for k, (rot, t) in enumerate(ops):
        if y is x and k == 0:
          continue
        d = rot @ y + t - x
        if np.linalg.norm(orth @ (d - np.round(d))) < 1.4:
          return False
    return True

  rng = np.random.default_rng(seed)
  sites = [np.array([0.21, 0.16, 0.33])]
  while len(sites) < 12:
    x = rng.random(3)
    if apart(x, sites):
      sites.append(x)
  xs = xray.structure(crystal_symmetry=symm)
  for i, (e, x) in enumerate(zip("Pb C C C C C N N O O O C".split(), sites)):
    xs.add_scatterer(xray.scatterer(label="%s%d" % (e, i), site=tuple(x), u=0.02))
  xs.scattering_type_registry(table="wk1995")
  return xs


def _heavy_atom_case(d_min=2.0):
  """The calculated data of :func:`_heavy_atom_structure` to ``d_min``:
  (F_calc, |F|, its standardisation, the amplitudes on the network's list
  and which of them are measured)."""
  xs = _heavy_atom_structure()
  fc = xs.structure_factors(d_min=d_min, algorithm="direct").f_calc()
  f_obs = abs(fc).set_observation_type_xray_amplitude()
  std = symmetry.prepare(f_obs.crystal_symmetry())
  values, present = std.map_to_reflection_set(f_obs)
  present = np.asarray(present, bool)
  amplitudes = np.where(present, np.maximum(np.asarray(values).real, 0), 0.0)
  return fc, f_obs, std, amplitudes, present


def test_heavy_atoms_of_unknown_element_lead_to_the_whole_model_without_a_composition():
  """No composition: one heavy atom of unknown element alone, then the
  asymmetric unit guessed from the cell (C11 beside it) placed from the
  peaks of its models' maps, gives the right phases; the heavy-atom
  models carry no model of the cell, and the guess is named."""
  from phai_cctbx import composition_guess
  fc, f_obs, std, weights, _ = _heavy_atom_case()
  truth = benchmark.Truth(std, fc)
  measured = benchmark.measured_on_list(std, f_obs)
  r = lambda c: truth.r(search.list_signs(std, f_obs, c.phases), measured)
  X = search.atom_search_engine.UNKNOWN
  guesses = composition_guess.heavy_unknown_guesses(f_obs.unit_cell(), f_obs.space_group(),
                                                    f_obs.size())
  assert guesses[0] == ({X: 4}, {X: 4, "C": 44})
  s = search.SearchSettings(composition_guessed=True, atom_restarts=256, peak_maps=1)
  assert search.peak_search_atoms(s, f_obs, guesses[0][1]) is not None   # 12 atoms, not a molecule
  found, completion, r1 = search._heavy_unknown_candidates(
    f_obs, guesses[:1], std, weights, s)
  heavy = [c for c in found if c.label.startswith("heavy-atom model")]
  assert heavy[0].label.startswith("heavy-atom model 1 (X1") and heavy[0].model is None
  whole = [c for c in found if c.model is not None]
  assert whole[0].label.startswith("peak atom model 1 (C11 X1")
  assert completion == guesses[0][1] and r1 == whole[0].terms["model_r1"]
  assert r(whole[0]) > 0.95, [(c.label, r(c)) for c in found]


def test_no_peak_model_stands_out_where_the_heavy_atoms_repeat_under_a_half_translation(
    monkeypatch):
  """Where the best heavy-atom model repeats under a half translation of the
  cell, the models placed from its maps' peaks keep their R1 but none is
  marked as the solution; otherwise the decisive one is."""
  from test_composition_guess import _agreeing_models, _tiny_problem
  f_obs, std, weights, phases = _tiny_problem()

  def heavy_model(y):
    # Two Pb atoms: at y = 1/4 the c-glide repeats them half a cell along c.
    return search.atom_search_engine.AtomModel(
      elements=("Pb", "Pb"), occupancies=np.ones(2),
      sites=np.array([[0.1, y, 0.2], [0.4, y + 0.01, 0.7]]), b=2.0, r1=0.3,
      phases=phases)

  whole = _agreeing_models(phases, 0.04)
  monkeypatch.setattr(search.atom_search_engine, "from_peaks", lambda *a, **k: whole)
  monkeypatch.setattr(search.atom_search_engine, "model_free_r1", lambda f, m: m.r1 + 0.02)
  s = search.SearchSettings(peak_maps=1)
  for y, repeats in ((0.25, True), (0.13, False)):
    monkeypatch.setattr(search.atom_search_engine, "run",
                        lambda *a, **k: [heavy_model(y)])
    found, n, pseudo = search._heavy_atom_candidates(
      f_obs, {"Pb": 8, "O": 40}, {"Pb": 8}, std, weights, s)
    assert n == 2 and (pseudo is not None) == repeats
    assert found[0].label.startswith("heavy-atom model 1") and found[0].model is None
    peak = found[1]
    assert peak.label.startswith("peak atom model 1") and peak.model is not None
    assert bool(peak.terms.get("decisive")) == (not repeats)


def test_the_first_map_places_a_given_composition_and_the_heavy_atom_completions():
  """Which compositions are placed from the first map's peaks: a given one
  and the completions of heavy atoms of unknown element, at most
  FIRST_MAP_COMPOSITIONS; for a guess only those completions, else the
  guess; none at atomic resolution, without a composition or without the
  search from map peaks."""
  from phai_cctbx import composition_guess
  fc, f_obs, std, _, _ = _heavy_atom_case()
  given = {"Pb": 4, "C": 24, "N": 8, "O": 12}
  guesses = composition_guess.heavy_unknown_guesses(f_obs.unit_cell(), f_obs.space_group(),
                                                    f_obs.size())
  completions = [c for _, c in guesses]
  assert len(completions) == 2
  s = search.SearchSettings()
  assert search.first_map_compositions(s, f_obs, given) == [given]
  assert search.first_map_compositions(s, f_obs, given, guesses) == [given, completions[0]]
  guessed = dataclasses.replace(s, composition_guessed=True)
  carbon = {"C": 48}
  assert search.first_map_compositions(guessed, f_obs, carbon, guesses) == completions
  assert search.first_map_compositions(guessed, f_obs, carbon) == [carbon]
  assert search.first_map_compositions(s, f_obs, None, guesses) == []
  assert search.first_map_compositions(dataclasses.replace(s, peak_maps=0), f_obs, given) == []
  assert search.first_map_compositions(dataclasses.replace(s, first_map=False), f_obs, given) == []
  atomic = abs(_heavy_atom_structure().structure_factors(d_min=1.0, algorithm="direct").f_calc())
  assert search.first_map_compositions(s, atomic, given) == []
  # Beyond the search from map peaks (48 carbon atoms per asymmetric unit,
  # where 98 reflections allow 16): nothing.
  assert search.first_map_compositions(s, f_obs, {"C": 192}) == []


def test_the_peaks_of_an_agreed_first_map_give_a_decisive_model_before_the_atom_search():
  """Where random dual-space starts agree on a map below atomic resolution,
  the given composition is placed from its peaks right after them: a
  decisive model of the right phases, a stage of its own before the random
  atom search; no such stage without a composition.  One composition's
  decisive model ends the stage (_first_map_candidates)."""
  fc, f_obs, std, amplitudes, present = _heavy_atom_case()
  truth = benchmark.Truth(std, fc)
  measured = benchmark.measured_on_list(std, f_obs)
  r = lambda c: truth.r(search.list_signs(std, f_obs, c.phases), measured)
  given = {"Pb": 4, "C": 24, "N": 8, "O": 12}
  s = search.SearchSettings(method="dual_space", starts=8, more_starts=0, sign_combinations=0,
                            omit_refinement=0, atom_restarts=16, atom_retry=False, peak_maps=1,
                            peak_rounds=1, heavy_atoms=False)
  found = search.run(f_obs, std, amplitudes, present, None, s, composition=given)
  assert found.stages[:3] == ["dual-space from random phases",
                              "atoms from the peaks of the first map (C6 Pb1 O3 N2)",
                              "atom search (12 atoms)"]
  first = [c for c in found.candidates if c.start == "first map peaks"]
  assert first and first[0].terms.get("decisive") and r(first[0]) > 0.95
  assert first[0].label.startswith("peak atom model 1")
  none = search.run(f_obs, std, amplitudes, present, None, s)
  assert not any("first map" in stage for stage in none.stages)
  # The stage keeps one composition's candidates once it gives a decisive model.
  lead = max(found.candidates[:8], key=lambda c: c.terms["held_out_cc"])
  weights = np.where(present, amplitudes, 0.0)
  more = search._first_map_candidates(f_obs, [given, {"C": 48}], lead, std, weights, s)
  assert all(c.model.elements.count("Pb") == 1 for c in more)
  # Nothing where no model is decisive: all carbon cannot fit the Pb atom.
  assert search._first_map_candidates(f_obs, [{"C": 48}], lead, std, weights, s) == []


def test_a_call_of_the_first_random_starts_is_checked_by_the_peaks_of_its_map():
  """Where the first random dual-space starts already call a solution below
  atomic resolution, the given composition is still placed from the peaks
  of the map that picks it; a decisive model then stands for the solution
  (its phases complete, the call's few wrong signs gone) and the search
  ends there.  Without a composition the call ends the search at once."""
  fc, f_obs, std, amplitudes, present = _heavy_atom_case()
  truth = benchmark.Truth(std, fc)
  measured = benchmark.measured_on_list(std, f_obs)
  given = {"Pb": 4, "C": 24, "N": 8, "O": 12}
  s = search.SearchSettings(method="dual_space", starts=8, more_starts=0, sign_combinations=0,
                            omit_refinement=0, atom_restarts=16, atom_retry=False, peak_maps=1,
                            peak_rounds=1, heavy_atoms=False, stop_fom=0.0)
  found = search.run(f_obs, std, amplitudes, present, None, s, composition=given)
  assert found.stages == ["dual-space from random phases",
                          "atoms from the peaks of the first map (C6 Pb1 O3 N2)"]
  chosen = found.candidates[found.best]
  assert chosen.start == "first map peaks" and chosen.terms.get("decisive")
  assert truth.r(search.list_signs(std, f_obs, chosen.phases), measured) > 0.95
  alone = search.run(f_obs, std, amplitudes, present, None, s)
  assert alone.stages == ["dual-space from random phases"]
  assert alone.candidates[alone.best].method == "dual_space"
