"""Milliseconds of one descent step of the atom search (a benchmark, not a test).

    python regression/benchmark_atom_search_step.py STRUCTURE.cif [...] [--d-min 2.0]
        [--placements 2048] [--repeats 20]

For each structure CIF: |F| calculated at ``--d-min``, the structure's
composition laid out as the search lays it out (``atom_search.sample_layouts``),
and the forward and backward pass of R1 over all the placements, then of the
bond penalty (a molecular composition) or the contact penalty (any other)
over the placements kept bonded, each timed on one CPU thread and printed as
the median over ``--repeats`` steps.  The search runs 1000 such steps (5
rounds of 200) per search.
"""
from __future__ import absolute_import, division, print_function

import argparse
import os
import statistics
import time

from phai_cctbx import atom_search, benchmark


def step_ms(loss, repeats):
  """Median milliseconds of ``loss().backward()``."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    loss().backward()
    times.append(1000.0 * (time.perf_counter() - t0))
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("structures", nargs="+")
  parser.add_argument("--d-min", type=float, default=2.0)
  parser.add_argument("--placements", type=int, default=2048)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  import torch
  torch.set_num_threads(1)
  print("%-28s %-12s %5s %5s %9s %11s" % ("structure", "group", "atoms", "refl", "R1 ms",
                                          "penalty ms"))
  for path in args.structures:
    xs = benchmark.read_structure(path)
    f_obs = benchmark.structure_factors(xs, args.d_min).as_amplitude_array()
    counts = benchmark.cell_composition(xs, f_obs)
    layouts = atom_search.sample_layouts(counts, f_obs.space_group(), args.placements, 0)
    if layouts is None:
      print("%-28s more atoms than the search places" % os.path.basename(path)[:28])
      continue
    engine = atom_search.AtomSearch(f_obs, layouts.elements, layouts.occupancies[0])
    layout = engine.as_tensors(layouts)
    x = torch.rand(args.placements, len(layouts.elements), 3, requires_grad=True)
    b = torch.full((args.placements,), 1.5, requires_grad=True)
    bonded = layout[3].nonzero()[:, 0]
    penalty = engine.bond_penalty if engine.molecular else engine.contact_penalty
    r1 = step_ms(lambda: engine.r1(engine.placed(x, layout), b, layout=layout).sum(),
                 args.repeats)
    pen = step_ms(lambda: penalty(engine.placed(x, layout)[bonded], layout[0][bonded]).sum(),
                  args.repeats)
    print("%-28s %-12s %5d %5d %9.1f %11.1f" % (
      os.path.basename(path)[:28], str(f_obs.space_group_info()).replace(" ", ""),
      len(layouts.elements), f_obs.size(), r1, pen))


if __name__ == "__main__":
  main()
