"""How many random dual-space starts reach the solution (a benchmark, not a test).

    python regression/benchmark_dual_space_starts.py --structures DIR [--d-min 1.6]
        [--starts 16] [--polish-cycles 200] [--polish-tolerance 0.001]

For every structure CIF in DIR: |F| calculated with cctbx at ``--d-min``,
``--starts`` random starts of the dual-space engine (``phai_cctbx.dual_space``,
its default settings except those given), each scored by the paper's r
against the true phases.  Prints per structure the starts with r > 0.95, the
best and median r and the seconds, then the totals: the figures behind the
choice of the low-density-elimination polish (``--polish-cycles 5`` gives the
engine as it was before).
"""
import argparse
import glob
import os
import time

import numpy as np

from phai_cctbx import benchmark, dual_space, search, symmetry


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--structures", required=True, help="folder of structure CIFs")
  p.add_argument("--d-min", type=float, default=1.6)
  p.add_argument("--starts", type=int, default=16)
  p.add_argument("--seed", type=int, default=1)
  p.add_argument("--polish-cycles", type=int, default=dual_space.Settings.polish_cycles)
  p.add_argument("--polish-tolerance", type=float, default=dual_space.Settings.polish_tolerance)
  a = p.parse_args()
  settings = dual_space.Settings(polish_cycles=a.polish_cycles,
                                 polish_tolerance=a.polish_tolerance)
  files = sorted(glob.glob(os.path.join(a.structures, "*.cif")))
  if not files:
    raise SystemExit("no .cif files in %s" % a.structures)
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
    runs = dual_space.run(f_obs, problem.random_phases(a.starts, np.random.default_rng(a.seed)),
                          settings, problem=problem)
    t = time.time() - t0
    seconds += t
    rs = np.array([truth.r(search.list_signs(std, f_obs, c.phases), measured) for c in runs])
    k = int((rs > 0.95).sum())
    n_right += k
    n_structures += k > 0
    print("%-40s %2d of %d starts r > 0.95  best %.3f  median %.3f  %5.1f s"
          % (os.path.basename(path)[:40], k, a.starts, rs.max(), np.median(rs), t), flush=True)
  print("d_min %.2f A, polish %d cycles (tolerance %g rad): %d starts with r > 0.95; "
        "%d of %d structures with at least one; %.0f s"
        % (a.d_min, a.polish_cycles, a.polish_tolerance, n_right, n_structures, len(files), seconds))


if __name__ == "__main__":
  main()
