"""Which phases stand for the solution: the rules of ``search.choose`` side by
side (a benchmark, not a test).

    python regression/benchmark_solution_choice.py --structures DIR [DIR ...]
        [--d-min 1.6 2.0] [--seeds 5] [--method dual_space] [--more-starts N]
        [--network-seeds F [F ...]] [--cycles N] [--patience N] [--delta D]
        [--held-out-cycles N] [--extend X] [--first-seed N]
        [--sign-combinations K] [--sign-modes refine flip]
        [--network-frames N] [--snapshots N [N ...]]

For every structure CIF in the folders and every resolution: |F| calculated
with cctbx, the search of phai.solve run once per random seed (default
settings, ``--method`` as ``phasing.method``, stopping early as phai.solve
does), and on its candidates each rule of :func:`phai_cctbx.search.choose`
(``held_out``, ``consensus``, ``most_symmetric``, ``best_fom``) picks the
solution's phases, scored by the paper's r against the true phases.  Prints per
resolution and seed the structures solved (r > 0.95) by each rule and the
"solved" calls (figure of merit >= the verdict's level) that were wrong,
the structures with at least one right candidate (what a perfect choice
would solve) and the random starts that reached r > 0.95, then the means
over the seeds.  ``--cycles``, ``--patience``, ``--delta``, ``--extend``
and ``--held-out-cycles`` change the dual-space engine's settings
(``phasing.dual_space``), ``--network-seeds``
the partial starts of method auto.
"""
import argparse
import copy
import dataclasses
import glob
import os

import numpy as np
from libtbx.utils import Sorry

from phai_cctbx import benchmark, dual_space, search, symmetry
from phai_cctbx import solve as solve_module

RULES = search.CHOICE_RULES


def cases(folders, d_min):
  out = []
  for path in sorted(p for f in folders for p in glob.glob(os.path.join(f, "*.cif"))):
    try:
      xs = benchmark.read_structure(path)
      std = symmetry.prepare(xs.crystal_symmetry())
    except Sorry as e:
      print("skipped %s: %s" % (os.path.basename(path), e))
      continue
    f_true = benchmark.structure_factors(xs, d_min)
    f_obs = abs(f_true).set_observation_type_xray_amplitude()
    values, present = std.map_to_reflection_set(f_obs)
    out.append(dict(name=os.path.basename(path), std=std, f_obs=f_obs,
                    amplitudes=np.maximum(np.asarray(values).real, 0.0),
                    present=np.asarray(present, dtype=bool),
                    truth=benchmark.Truth(std, f_true),
                    measured=benchmark.measured_on_list(std, f_obs)))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--structures", nargs="+", required=True, help="folders of structure CIFs")
  p.add_argument("--d-min", type=float, nargs="+", default=[1.6, 2.0])
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--first-seed", type=int, default=0, help="random seeds from this one")
  p.add_argument("--method", default="dual_space", choices=("dual_space", "auto"))
  p.add_argument("--more-starts", type=int, default=search.SearchSettings().more_starts,
                 help="phasing.dual_space.more_starts (default: phai.solve's)")
  p.add_argument("--network-seeds", type=float, nargs="*", default=[],
                 help="phasing.dual_space.network_seeds (method auto)")
  p.add_argument("--sign-combinations", type=int, default=search.SearchSettings().sign_combinations,
                 help="phasing.dual_space.sign_combinations")
  p.add_argument("--sign-modes", nargs="+", default=list(search.SearchSettings().sign_modes),
                 choices=("refine", "flip"))
  p.add_argument("--network-frames", type=int, default=search.SearchSettings().network_frames,
                 help="phasing.network_frames (method auto)")
  p.add_argument("--snapshots", type=int, nargs="*",
                 default=list(search.SearchSettings().snapshots),
                 help="flipping cycles after which random starts' maps are also candidates")
  engine = dual_space.Settings()
  p.add_argument("--cycles", type=int, default=engine.cycles)
  p.add_argument("--patience", type=int, default=engine.patience)
  p.add_argument("--delta", type=float, default=engine.delta)
  p.add_argument("--held-out-cycles", type=int, default=engine.held_out_cycles,
                 help="low-density elimination cycles of the held-out correlation")
  p.add_argument("--extend", type=float, default=engine.extend,
                 help="free reflections to d_min / (1 + X), not beyond 1 A; 0: none")
  a = p.parse_args()
  engine = dataclasses.replace(engine, cycles=a.cycles, patience=a.patience, delta=a.delta,
                               held_out_cycles=a.held_out_cycles, extend=a.extend)
  model = None
  if a.method == "auto":
    from phai_cctbx.weights import load_model
    model = load_model(None)
  for d_min in a.d_min:
    todo = cases(a.structures, d_min)
    if not todo:
      raise SystemExit("no usable .cif files in %s" % " ".join(a.structures))
    totals = {rule: [] for rule in RULES}
    reachable = []
    for seed in range(a.first_seed, a.first_seed + a.seeds):
      solved = {rule: 0 for rule in RULES}
      wrong = {rule: 0 for rule in RULES}
      any_right = right_starts = random_starts = 0
      for case in todo:
        settings = search.SearchSettings(method=a.method, random_seed=seed,
                                         stop_fom=solve_module.SOLVED_FOM,
                                         more_starts=a.more_starts,
                                         network_seeds=tuple(a.network_seeds),
                                         sign_combinations=a.sign_combinations,
                                         sign_modes=tuple(a.sign_modes),
                                         network_frames=a.network_frames,
                                         snapshots=tuple(a.snapshots),
                                         dual_space=engine)
        try:
          found = search.run(case["f_obs"], case["std"], case["amplitudes"],
                             case["present"], model, settings)
        except (Sorry, ValueError) as e:
          print("  %s at %.2f A: %s" % (case["name"], d_min, e))
          continue
        weights = np.where(case["present"], case["amplitudes"], 0.0)
        r_all = [(case["truth"].r(c.signs, case["measured"]), c) for c in found.candidates]
        any_right += any(r > 0.95 for r, _ in r_all)
        right_starts += sum(c.count for r, c in r_all if c.independent and r > 0.95)
        random_starts += sum(c.count for _, c in r_all if c.independent)
        for rule in RULES:
          candidates = [copy.copy(c) for c in found.candidates]
          chosen = candidates[search.choose(candidates, weights, case["f_obs"], case["std"],
                                            rule=rule, problem=found.problem,
                                            held_out_cycles=engine.held_out_cycles)]
          r = case["truth"].r(search.list_signs(case["std"], case["f_obs"], chosen.phases),
                              case["measured"])
          solved[rule] += r > 0.95
          wrong[rule] += chosen.fom >= solve_module.SOLVED_FOM and r <= 0.95
      for rule in RULES:
        totals[rule].append(solved[rule])
      reachable.append(any_right)
      print("d_min %.2f A, seed %d, %d structures: " % (d_min, seed, len(todo))
            + ", ".join("%s %d solved (%d wrong 'solved')" % (rule, solved[rule], wrong[rule])
                        for rule in RULES)
            + "; %d with a right candidate; random starts right %d of %d"
            % (any_right, right_starts, random_starts), flush=True)
    print("d_min %.2f A, mean over %d seeds: " % (d_min, a.seeds)
          + ", ".join("%s %.1f" % (rule, np.mean(totals[rule])) for rule in RULES)
          + ", with a right candidate %.1f" % np.mean(reachable), flush=True)


if __name__ == "__main__":
  main()
