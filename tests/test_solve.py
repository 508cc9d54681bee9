"""Tests of phai_cctbx.solve with a stand-in for the network that knows the answer."""
import io

import numpy as np
import pytest

from cctbx import crystal, miller, sgtbx
from cctbx.array_family import flex
from cctbx.development import random_structure
from libtbx.utils import Sorry

from phai_cctbx import phasing, reflection_set, solve as solve_module, symmetry


def _structure(symbol, cell):
  return random_structure.xray_structure(
    space_group_info=sgtbx.space_group_info(symbol), unit_cell=cell,
    elements=["C"] * 4 + ["O"] * 2, use_u_iso=True, u_iso=0.02,
    random_u_iso=False, random_f_prime_d_min=0, min_distance=1.0)


def _true_signs(xs):
  std = symmetry.prepare(xs.crystal_symmetry())
  p1 = xs.expand_to_p1().change_basis(std.cb_op)
  idx = flex.miller_index([tuple(int(x) for x in h) for h in reflection_set.indices()])
  ms = miller.set(crystal.symmetry(p1.unit_cell(), "P 1"), idx, anomalous_flag=False)
  f = ms.structure_factors_from_scatterers(p1, algorithm="direct").f_calc()
  return np.where(f.data().as_numpy_array().real >= 0, 1.0, -1.0)


class KnowsTheAnswer(object):
  """Stands in for phasing.phase_reflection_set: trial 2 gets the true signs."""

  def __init__(self, signs):
    self.signs = signs
    self.calls = []

  def __call__(self, amplitudes, measured, model, trials=8, cycles=16, random_seed=0,
               start_signs=None, **kw):
    if start_signs is not None:
      trials = len(start_signs)
    self.calls.append((np.array(amplitudes), np.array(measured), trials, cycles, random_seed))
    n = len(self.signs)
    rng = np.random.RandomState(random_seed)
    signs = np.where(rng.uniform(size=(trials, n)) < 0.5, -1.0, 1.0)
    best = min(1, trials - 1)
    signs[best] = self.signs
    probs = np.full((trials, n), 0.9)
    fom = np.full(trials, 0.2)
    fom[best] = 0.95
    return phasing.PhasingResult(
      signs=signs, probabilities=probs, fom=fom,
      fom_terms={"stability": fom.copy(), "confidence": fom.copy()},
      cycles_run=np.full(trials, cycles), converged=fom > 0.5,
      history=np.repeat(signs[:, None, :], cycles, axis=1), best=best,
      verdict="solved", seconds=0.0)


def _data(symbol, cell, d_min=1.0, intensities=True):
  xs = _structure(symbol, cell)
  fc = xs.structure_factors(d_min=d_min, algorithm="direct").f_calc()
  f = fc.amplitudes()
  if intensities:
    obs = f.f_as_f_sq()
    obs = obs.customized_copy(sigmas=flex.sqrt(obs.data()) * 0.05 + 0.001 * flex.max(obs.data()))
    obs.set_observation_type_xray_intensity()
  else:
    obs = f.customized_copy(sigmas=f.data() * 0.01 + 0.01)
    obs.set_observation_type_xray_amplitude()
  return xs, fc, obs


def _phase_errors(fc, phases):
  fm, pm = fc.common_sets(phases)
  d = fm.phases(deg=True).data() - pm.data()
  return np.abs((d.as_numpy_array() + 180) % 360 - 180), np.abs(fm.data().as_numpy_array())


@pytest.mark.parametrize("symbol,cell", [
  ("P 1 21/n 1", (6.4, 7.2, 8.1, 90, 98, 90)),
  ("P b c a", (7.1, 8.2, 9.3, 90, 90, 90)),
  ("C 1 2/c 1", (9.5, 6.2, 8.1, 90, 111, 90)),
])
def test_solve_end_to_end_with_known_signs(monkeypatch, symbol, cell):
  xs, fc, obs = _data(symbol, cell)
  standin = KnowsTheAnswer(_true_signs(xs))
  monkeypatch.setattr(phasing, "phase_reflection_set", standin)
  log = io.StringIO()
  res = solve_module.solve(obs, model=object(), trials=3, cycles=4, random_seed=5, log=log,
                           method="network")
  amps, measured, trials, cycles, seed = standin.calls[0]
  assert (trials, cycles, seed) == (3, 4, 5)
  assert measured.sum() > 100
  # the trial with the true signs is chosen, by the figure of merit alone
  assert res.best_trial == 1 and res.chosen.label == "network trial 2"
  assert res.verdict in [v[0] for v in solve_module.VERDICTS]
  err, amp = _phase_errors(fc, res.phases)
  strong = amp > 1e-3 * amp.max()
  assert err[strong].max() < 1e-3
  assert res.phases.size() == res.fom.size() == res.phased.size()
  assert res.phases.crystal_symmetry().is_similar_symmetry(obs.crystal_symmetry())
  assert abs(flex.mean(res.fom.data()) - 0.8) < 1e-6
  # map coefficients carry FOM * F with the phases
  f, p = res.f_obs.common_sets(res.phased)
  assert np.allclose(flex.abs(p.data()).as_numpy_array(), 0.8 * f.data().as_numpy_array())
  # reflections of the list that were not measured: phase extension
  assert res.extended.size() > 0
  assert res.extended.lone_set(res.f_obs).size() == res.extended.size()
  fext = res.extended.structure_factors_from_scatterers(xs, algorithm="direct").f_calc()
  err, amp = _phase_errors(fext, res.extended)
  strong = amp > 1e-3 * amp.max()
  assert err[strong].max() < 1e-3
  summary = res.summary()
  assert summary["verdict"] == res.verdict and len(summary["trials"]) == 3
  assert summary["chosen"] == "network trial 2" and summary["method"] == "network"
  assert len(summary["candidates"]) == 3 and summary["advice"]
  assert summary["symmetry_check"]["n_disagreeing"] == 0
  import json
  json.dumps(summary)
  text = log.getvalue()
  assert "trial" in text and "Verdict: " + res.verdict in text and "effective resolution" in text


def test_amplitudes_accepted(monkeypatch):
  xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90), intensities=False)
  monkeypatch.setattr(phasing, "phase_reflection_set", KnowsTheAnswer(_true_signs(xs)))
  res = solve_module.solve(obs, model=object(), trials=2, cycles=2, method="network")
  assert res.amplitudes.treatment.startswith("amplitudes")


def test_too_few_reflections(monkeypatch):
  xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90), d_min=3.0)
  monkeypatch.setattr(phasing, "phase_reflection_set", KnowsTheAnswer(_true_signs(xs)))
  assert obs.size() < 50
  with pytest.raises(Sorry) as e:
    solve_module.solve(obs, model=object(), min_reflections=50)
  assert "fewer than" in str(e.value)


def test_few_reflections_phased_with_a_warning(monkeypatch):
  xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90), d_min=2.0)
  monkeypatch.setattr(phasing, "phase_reflection_set", KnowsTheAnswer(_true_signs(xs)))
  log = io.StringIO()
  # The network alone: the warning is the subject, not the search.
  res = solve_module.solve(obs, guess_composition=False, method="network",
                           model=object(), trials=2, cycles=2, log=log)
  assert 10 <= obs.size() < 50
  assert res.warnings and "only" in res.warnings[0]
  assert "Warning: only" in log.getvalue()
  assert res.summary()["warnings"] == res.warnings
  assert res.phases.size() == res.f_obs.size()


def test_dual_space_alone_solves_without_a_network():
  xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90), d_min=1.0)
  log = io.StringIO()
  res = solve_module.solve(obs, model=None, method="dual_space", dual_space_starts=4,
                           log=log)
  assert res.phasing is None and res.chosen.method == "dual_space"
  assert res.phases.size() == res.f_obs.size()
  err, amp = _phase_errors(fc, res.phases)
  # phases right up to a permissible origin shift: compare by the paper's r
  from phai_cctbx import benchmark
  std = res.standardisation
  truth = benchmark.Truth(std, fc)
  from phai_cctbx import search
  signs = search.list_signs(std, res.f_obs, res.phases)
  assert truth.r(signs, benchmark.measured_on_list(std, res.f_obs)) > 0.95
  assert res.verdict == "solved", log.getvalue()
  assert "Candidates" in log.getvalue()


def test_auto_prefers_the_better_candidate(monkeypatch):
  """A network that returns wrong signs does not displace a dual-space solution."""
  xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90), d_min=1.0)
  wrong = -_true_signs(xs) * np.where(np.arange(1205) % 3 == 0, -1, 1)
  monkeypatch.setattr(phasing, "phase_reflection_set", KnowsTheAnswer(wrong))
  res = solve_module.solve(obs, guess_composition=False,
                           model=object(), trials=3, cycles=2, dual_space_starts=4,
                           stop_early=False, sign_combinations=0)
  assert res.chosen.method == "dual_space"
  labels = [c.label for c in res.search.candidates]
  assert any(l.startswith("network trial") for l in labels)
  assert any(l.startswith("dual-space from network") for l in labels)
  assert any(l.startswith("network from dual-space") for l in labels)


def test_network_trials_are_refined_without_flipping(monkeypatch):
  """At 2.0 A a network trial with the true signs is refined by low-density
  elimination alone beside flipping: the refined candidate stays right and
  phases the reflections beyond the trial's own."""
  xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90), d_min=2.0)
  monkeypatch.setattr(phasing, "phase_reflection_set", KnowsTheAnswer(_true_signs(xs)))
  res = solve_module.solve(obs, guess_composition=False,
                           model=object(), trials=2, cycles=2, dual_space_starts=2,
                           stop_early=False, recycle=0, refine_network=True,
                           sign_combinations=0)
  refined = [c for c in res.search.candidates if c.label == "refined network trial 2"]
  assert len(refined) == 1 and refined[0].method == "dual_space" and not refined[0].independent
  errors, amps = _phase_errors(fc, refined[0].phases)
  assert np.average(errors, weights=amps) < 20.0
  assert refined[0].phases.size() == res.f_obs.size()
  plain = solve_module.solve(obs, guess_composition=False,
                           model=object(), trials=2, cycles=2, dual_space_starts=2,
                             stop_early=False, recycle=0, sign_combinations=0)
  assert not any(c.label.startswith("refined network") for c in plain.search.candidates)



def test_confident_network_signs_seed_partial_dual_space_starts(monkeypatch):
  """With network_seeds, each network trial seeds two starts per fraction
  (its most confident phases alone, and with random others); started from a
  fifth of the true signs, charge flipping finds the rest."""
  xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90), d_min=1.0)
  monkeypatch.setattr(phasing, "phase_reflection_set", KnowsTheAnswer(_true_signs(xs)))
  res = solve_module.solve(obs, guess_composition=False,
                           model=object(), trials=2, cycles=2, dual_space_starts=2,
                           stop_early=False, recycle=0, network_seeds=(0.2,),
                           sign_combinations=0)
  seeded = [c for c in res.search.candidates if " % of network trial" in c.label]
  assert len(seeded) == 2 * len([c for c in res.search.candidates if c.method == "network"])
  assert all(c.method == "dual_space" and not c.independent for c in seeded)
  assert "dual-space from the network's confident signs" in res.search.stages
  # Charge flipping may end at any of P2_1/c's 8 permissible origins.
  shifts = [(a, b, c) for a in (0, 0.5) for b in (0, 0.5) for c in (0, 0.5)]
  mean_errors = []
  for cand in seeded:
    fm, pm = fc.common_sets(cand.phases)
    hkl = np.array(fm.indices(), dtype=float).reshape(-1, 3)
    amps = np.abs(fm.data().as_numpy_array())
    for shift in shifts:
      d = fm.phases(deg=True).data().as_numpy_array() - pm.data().as_numpy_array() \
        - 360.0 * hkl @ np.array(shift)
      mean_errors.append(np.average(np.abs((d + 180) % 360 - 180), weights=amps))
  assert min(mean_errors) < 20.0

def test_unknown_method():
  xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90), d_min=1.5)
  with pytest.raises(Sorry) as e:
    solve_module.solve(obs, model=object(), method="direct")
  assert "phasing.method" in str(e.value)


def test_unsupported_group_before_work():
  cs = crystal.symmetry(unit_cell=(5, 6, 7, 80, 85, 95), space_group_symbol="P -1")
  ms = miller.build_set(cs, anomalous_flag=False, d_min=1)
  obs = ms.array(data=flex.double(ms.size(), 1.0)).set_observation_type_xray_amplitude()
  with pytest.raises(Sorry) as e:
    solve_module.solve(obs, model=object())
  assert "not supported" in str(e.value)


def test_with_a_real_small_network(tmp_path):
  """The real phasing code and weights loading on a small untrained network."""
  import torch
  from phai_cctbx.model import PhAIConfig, PhAINet
  from phai_cctbx.weights import save_weights
  torch.manual_seed(0)
  net = PhAINet(PhAIConfig(filters=4, cnn_depth=1, dim=16, dim_exp=16,
                           dim_token_exp=8, mlp_depth=1))
  path = str(tmp_path / "small.pt")
  save_weights(path, net, "max", {"note": "untrained, for tests"})
  xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90))
  res = solve_module.solve(obs, weights=path, trials=2, cycles=3, method="network")
  assert res.phasing.signs.shape == (2, 1205)
  assert res.phases.size() > 0 and res.verdict in [v[0] for v in solve_module.VERDICTS]
  assert res.summary()["weights"] == path


def test_below_atomic_resolution_the_network_runs_after_a_called_solution(monkeypatch):
  """With the first dual-space stage calling a solution, auto still runs the
  network's trials below atomic resolution (network_check), and their
  candidates compete for the choice; at 1.0 A, or with the check off, it
  stops there."""
  monkeypatch.setattr(solve_module, "SOLVED_FOM", 0.0)  # every stage "solves"
  kw = dict(model=object(), trials=2, cycles=2, dual_space_starts=2, dual_space_more_starts=0)
  for d_min, check, stages in ((2.0, True, ["dual-space from random phases", "network"]),
                               (2.0, False, ["dual-space from random phases"]),
                               (1.0, True, ["dual-space from random phases"])):
    xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90), d_min=d_min)
    fake = KnowsTheAnswer(_true_signs(xs))
    monkeypatch.setattr(phasing, "phase_reflection_set", fake)
    res = solve_module.solve(obs, network_check=check, **kw)
    assert res.search.stages == stages, (d_min, check)
    networked = [c for c in res.search.candidates if c.method == "network"]
    assert len(networked) == (2 if "network" in stages else 0) and len(fake.calls) == len(networked) // 2


def test_a_call_that_the_networks_trials_overturn_does_not_end_the_search(monkeypatch):
  """Where the network's trials of the check take the choice from the
  solution a dual-space stage called, and the one that picks it now is not
  called solved, the search goes on with its later stages (the trials are
  not run again); where the call still picks the solution, it ends there.

  Why: at 2.0 A (the epoxide of the development structures, 34
  reflections) 15 of 16 random starts agreed on a near-solution (r 0.89)
  called solved; a network trial predicted the held-out amplitudes better,
  and the search ended with it, "not solved", before its atom search,
  whose model (R1 0.063, r 1.00) is decisive."""
  monkeypatch.setattr(solve_module, "SOLVED_FOM", 0.5)
  from phai_cctbx import search
  # Dual-space candidates are "solved", the network's are not.
  monkeypatch.setattr(search, "figure_of_merit",
                      lambda terms, weights=None: 0.1 if "network_fom" in terms else 0.9)
  kw = dict(model=object(), trials=2, cycles=2, dual_space_starts=2, dual_space_more_starts=2,
            sign_combinations=0, omit_refinement=0, guess_composition=False)
  xs, fc, obs = _data("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90), d_min=2.0)
  for network_picks in (True, False):
    monkeypatch.setattr(search, "top_candidate", lambda cands, rule="held_out": max(
      range(len(cands)), key=lambda i: ((cands[i].method == "network") == network_picks,
                                        cands[i].fom)))
    fake = KnowsTheAnswer(_true_signs(xs))
    monkeypatch.setattr(phasing, "phase_reflection_set", fake)
    res = solve_module.solve(obs, **kw)
    if network_picks:
      assert res.search.stages == ["dual-space from random phases", "network",
                                   "dual-space from the network", "network from dual-space",
                                   "dual-space from 2 more random phases"]
      # The trials once, then the network again from dual-space results.
      assert fake.calls[0][2] == 2 and len(fake.calls) == 2
      assert res.chosen.method == "network" and res.verdict == "not solved"
    else:
      assert res.search.stages == ["dual-space from random phases", "network"]
      assert len(fake.calls) == 1 and res.verdict == "solved"
