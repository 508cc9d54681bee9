"""phai.solve on inorganic cells given a formula without Z (a benchmark, not a test).

    python regression/benchmark_formula_without_z.py STRUCTURE.cif [...] [--d-min 2.0]
        [--rule volume|order]

For each inorganic structure CIF (molecular ones are skipped): |F| calculated
at ``--d-min``, its content written as the formula in lowest terms, and
``phai_cctbx.solve.solve`` run as phai.solve runs it (auto, the benchmark's
seed per structure and resolution) with the atoms per cell that phai.solve
takes from that formula without Z: ``--rule volume`` (now) the likeliest Z
by the cell's volume, the next plausible one searched where the first gives
no model that stands out (``atom_search.cell_count_choices``); ``--rule
order`` (the rule before) one formula unit in the asymmetric unit.  Prints
per structure the true Z, the compositions searched (per asymmetric unit),
r against the truth, the verdict and the seconds, then the totals.
"""
from __future__ import absolute_import, division, print_function

import argparse
import math
import os
import statistics
import time
from functools import reduce

from phai_cctbx import atom_search, benchmark, composition_guess, search, solve
from phai_cctbx.model_building import Composition


def formula_in_lowest_terms(xs):
  """(formula, Z): the cell content of ``xs`` divided by the greatest common
  divisor of its counts."""
  counts = dict((e, int(round(c))) for e, c in benchmark.cell_composition(xs, xs).items())
  z = reduce(math.gcd, counts.values())
  return dict((e, c // z) for e, c in counts.items()), z


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("structures", nargs="+")
  parser.add_argument("--d-min", type=float, default=2.0)
  parser.add_argument("--rule", choices=("volume", "order"), default="volume")
  args = parser.parse_args()
  rows = []
  for path in args.structures:
    name = os.path.basename(path)
    try:
      xs = benchmark.read_structure(path)
    except Exception as e:  # an unusable file: said, and the run goes on
      print("%-30s skipped: %s" % (name[:30], e))
      continue
    formula, z = formula_in_lowest_terms(xs)
    if atom_search.molecular(formula):
      continue
    group = xs.space_group()
    composition = Composition(tuple(formula), formula, per_cell=False)
    if args.rule == "order":
      choices = [dict(composition.times(group.order_z()).counts)]
    else:
      choices, _ = atom_search.cell_count_choices(composition, None, group, xs.unit_cell())
    std = benchmark._prepare(xs, benchmark.Settings())
    f_calc = benchmark.structure_factors(xs, args.d_min)
    f_obs = f_calc.as_amplitude_array()
    t0 = time.time()
    try:
      result = solve.solve(f_obs, random_seed=benchmark._job_seed(0, path, args.d_min),
                           composition=choices[0], composition_alternatives=choices[1:],
                           min_reflections=10)
    except Exception as e:  # too few reflections and the like: said, and the run goes on
      print("%-30s skipped: %s" % (name[:30], str(e).splitlines()[0]))
      continue
    seconds = time.time() - t0
    r = benchmark.Truth(std, f_calc).r(search.list_signs(std, result.f_obs, result.phases),
                                       benchmark.measured_on_list(std, f_obs))
    rows.append((r, result.verdict, seconds))
    print("%-30s Z %2d  %-40s r %6.3f  %-16s %5.0f s  %s" % (
      name[:30], z, " | ".join(composition_guess.describe(c, group) for c in choices),
      r, result.verdict, seconds, result.chosen.label[:50]), flush=True)
  if rows:
    solved = [r > benchmark.SOLVED_R for r, _, _ in rows]
    called = [v == "solved" for _, v, _ in rows]
    print("%d structures: %d solved (r > %.2f); %d called solved, %d of them right; "
          "median %.0f s, %.0f s in all" % (
            len(rows), sum(solved), benchmark.SOLVED_R, sum(called),
            sum(c and s for c, s in zip(called, solved)),
            statistics.median(s for _, _, s in rows), sum(s for _, _, s in rows)))


if __name__ == "__main__":
  main()
