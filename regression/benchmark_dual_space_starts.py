"""How many random dual-space starts reach the solution (a benchmark, not a test).

    python regression/benchmark_dual_space_starts.py --structures DIR [DIR ...]
        [--d-min 1.6] [--starts 16] [--polish-cycles 200] [--polish-tolerance 0.001]
        [--from-truth] [--snapshots N [N ...]]

For every structure CIF in DIR: |F| calculated with cctbx at ``--d-min``,
``--starts`` random starts of the dual-space engine (``phai_cctbx.dual_space``,
its default settings except those given), each scored by the paper's r
against the true phases.  Prints per structure the starts with r > 0.95, the
best and median r and the seconds, then the totals: the figures behind the
choice of the low-density-elimination polish (``--polish-cycles 5`` gives the
engine as it was before).

``--from-truth`` also starts the engine from the true phases, once as it
runs from random starts (charge flipping, then the polish), once with
low-density elimination alone (``Settings(cycles=0)``, as sign-combination
starts are refined) and once by omit maps (``dual_space.omit_refinement``,
as the search's last stage refines its best candidates), and prints the r
each ends at and the held-out correlation (``dual_space.held_out_cc``) of
the true phases and of each end point: whether the solution is a fixed
point of the engine at all, and whether the choice would know it.  ``--starts 0`` runs no random starts.

``--snapshots N ...`` also polishes each start's map after N flipping cycles
(``dual_space.Settings.snapshots``) and prints, beside the end points, the
structures with a right run and those whose run with the best held-out
correlation is right, over the end points alone and over end points and
snapshots.
"""
import argparse
import dataclasses
import glob
import os
import time

import numpy as np

from phai_cctbx import benchmark, dual_space, search, symmetry


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--structures", required=True, nargs="+", help="folders of structure CIFs")
  p.add_argument("--d-min", type=float, default=1.6)
  p.add_argument("--starts", type=int, default=16)
  p.add_argument("--seed", type=int, default=1)
  p.add_argument("--polish-cycles", type=int, default=dual_space.Settings.polish_cycles)
  p.add_argument("--polish-tolerance", type=float, default=dual_space.Settings.polish_tolerance)
  p.add_argument("--snapshots", type=int, nargs="*", default=[],
                 help="also polish each start after this many flipping cycles")
  p.add_argument("--from-truth", action="store_true",
                 help="also run the engine from the true phases (flipping, and refinement alone)")
  a = p.parse_args()
  settings = dual_space.Settings(polish_cycles=a.polish_cycles,
                                 polish_tolerance=a.polish_tolerance)
  with_snapshots = dataclasses.replace(settings, snapshots=tuple(a.snapshots))
  picked = {"end points": [0, 0], "with snapshots": [0, 0]}
  files = sorted(f for folder in a.structures for f in glob.glob(os.path.join(folder, "*.cif")))
  if not files:
    raise SystemExit("no .cif files in %s" % " ".join(a.structures))
  kept = {"flip": 0, "refine": 0, "omit": 0}
  n_right = n_structures = 0
  seconds = 0.0
  for path in files:
    xs = benchmark.read_structure(path)
    std = symmetry.prepare(xs.crystal_symmetry())
    f_true = benchmark.structure_factors(xs, a.d_min)
    f_obs = abs(f_true).set_observation_type_xray_amplitude()
    truth = benchmark.Truth(std, f_true)
    measured = benchmark.measured_on_list(std, f_obs)
    t0 = time.time()
    problem = dual_space.P1Problem(f_obs, settings.resolution_factor,
                                   settings.weak_fraction, settings.extend)
    every = dual_space.run(f_obs, problem.random_phases(a.starts, np.random.default_rng(a.seed)),
                           with_snapshots, problem=problem) if a.starts else []
    runs = [c for c in every if not c.snapshot]
    t = time.time() - t0
    seconds += t
    r_of = lambda phases: truth.r(search.list_signs(std, f_obs, phases), measured)
    rs = np.array([r_of(c.phases) for c in runs] or [np.nan])
    snapshot_line = ""
    if a.snapshots and a.starts:
      r_all = np.array([r_of(c.phases) for c in every])
      cc = dual_space.held_out_cc(problem, np.stack([problem.phases_from(c.phases) for c in every]),
                                  cycles=settings.held_out_cycles)
      for name, n in (("end points", len(runs)), ("with snapshots", len(every))):
        picked[name][0] += (r_all[:n] > 0.95).any()
        picked[name][1] += r_all[:n][int(np.argmax(cc[:n]))] > 0.95
      snapshot_line = " | snapshots: %d of %d r > 0.95, best held-out cc r %.3f (end points %.3f)" % (
        (r_all[len(runs):] > 0.95).sum(), len(every) - len(runs),
        r_all[int(np.argmax(cc))], r_all[int(np.argmax(cc[:len(runs)]))])
    k = int((rs > 0.95).sum())
    n_right += k
    n_structures += k > 0
    line = "%-40s %2d of %d starts r > 0.95  best %.3f  median %.3f  %5.1f s" % (
      os.path.basename(path)[:40], k, a.starts, np.max(rs), np.median(rs), t) + snapshot_line
    if a.from_truth:
      true_p1 = problem.phases_from(f_true.phases(deg=True))
      ends = {}
      for mode, engine in (("flip", settings), ("refine", dataclasses.replace(settings, cycles=0))):
        end = dual_space.run(f_obs, true_p1[None], engine, problem=problem)[0].phases
        ends[mode] = (r_of(end), problem.phases_from(end))
        kept[mode] += ends[mode][0] > 0.95
      omitted = dual_space.omit_refinement(problem, true_p1[None])[0]
      end = dual_space.symmetrise(f_obs, problem.p1_set, omitted).phases
      ends["omit"] = (r_of(end), problem.phases_from(end))
      kept["omit"] += ends["omit"][0] > 0.95
      cc = dual_space.held_out_cc(problem, np.stack(
        [true_p1, ends["flip"][1], ends["refine"][1], ends["omit"][1]]),
        cycles=settings.held_out_cycles)
      line += (" | from the truth (held-out cc %.3f): flipping r %.3f (%.3f), refinement "
               "r %.3f (%.3f), omit maps r %.3f (%.3f)") % (
        cc[0], ends["flip"][0], cc[1], ends["refine"][0], cc[2], ends["omit"][0], cc[3])
    print(line, flush=True)
  print("d_min %.2f A, polish %d cycles (tolerance %g rad): %d starts with r > 0.95; "
        "%d of %d structures with at least one; %.0f s"
        % (a.d_min, a.polish_cycles, a.polish_tolerance, n_right, n_structures, len(files), seconds))
  if a.snapshots and a.starts:
    for name, (right, chosen) in picked.items():
      print("%s: %d structures with a run at r > 0.95; the best held-out correlation "
            "right for %d" % (name, right, chosen))
  if a.from_truth:
    print("from the true phases: flipping ends at r > 0.95 for %d of %d structures, "
          "refinement alone for %d, omit maps for %d"
          % (kept["flip"], len(files), kept["refine"], kept["omit"]))


if __name__ == "__main__":
  main()
