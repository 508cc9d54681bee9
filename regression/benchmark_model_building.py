"""How many true non-H atoms the starting model finds with the phases phai.solve finds.

    python regression/benchmark_model_building.py FOLDER [FOLDER ...] [--d-min 1.0 2.0]

For each structure CIF: |F| calculated with cctbx, phased by ``solve()`` (the
code path of phai.solve, shipped weights), the starting model built from the
phased map, and its atoms matched to the true non-hydrogen atoms within 0.3 Å
(cctbx euclidean model matching, permissible origin shifts allowed).  Prints
one line per structure and the totals, split by whether the phases reached
r > 0.95.
"""
import argparse
import glob
import io
import os

import phai_cctbx  # noqa: F401  (cctbx before torch)
import iotbx.cif
import numpy as np
from cctbx import euclidean_model_matching as emma

from phai_cctbx import reflection_set
from phai_cctbx.model_building import build_starting_model
from phai_cctbx.solve import solve
from phai_cctbx.weights import load_model


def matched(xs_true, model, tolerance=0.3):
  ref = xs_true.select(~xs_true.hd_selection())
  if model.is_empty():
    return 0, ref.scatterers().size()
  mm = emma.model_matches(ref.as_emma_model(), model.xray_structure.as_emma_model(),
                          tolerance=tolerance, rms_penalty_per_site=0)
  n = len(mm.refined_matches[0].pairs) if mm.n_matches() else 0
  return n, ref.scatterers().size()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("folders", nargs="+")
  parser.add_argument("--d-min", type=float, nargs="+", default=[1.0, 2.0])
  args = parser.parse_args()
  model = load_model()
  files = sorted(f for d in args.folders for f in glob.glob(os.path.join(d, "*.cif")))
  for d_min in args.d_min:
    totals = {True: [0, 0, 0], False: [0, 0, 0]}
    for path in files:
      try:
        xs = list(iotbx.cif.reader(file_path=path).build_crystal_structures().values())[0]
        fc = xs.structure_factors(d_min=d_min, algorithm="direct").f_calc()
        f = abs(fc)
        f.set_observation_type_xray_amplitude()
        res = solve(f, model=model, log=io.StringIO(), min_reflections=10)
      except Exception as e:  # unsupported group, too few reflections, ...
        print("%-45s %.1f A  skipped: %s" % (os.path.basename(path), d_min, str(e).splitlines()[0][:60]))
        continue
      values, present = res.standardisation.map_to_reflection_set(fc)
      w = np.abs(values) * present * reflection_set.unique_mask() * res.set_measured
      r = reflection_set.sign_correlation(w, np.where(values.real >= 0, 1.0, -1.0),
                                          res.phasing.best_signs)
      sm = build_starting_model(res.f_obs, res.phases, log=io.StringIO())
      n, n_true = matched(xs, sm)
      t = totals[r > 0.95]
      t[0] += n
      t[1] += n_true
      t[2] += 1
      print("%-45s %.1f A  r %.3f  atoms %2d/%2d matched (%d placed)"
            % (os.path.basename(path), d_min, r, n, n_true, len(sm.atoms)))
    for solved, (n, n_true, count) in totals.items():
      if count:
        print("d_min %.1f, phases %s: %d/%d true non-H atoms within 0.3 A (%.0f %%) in %d structures"
              % (d_min, "solved (r > 0.95)" if solved else "not solved", n, n_true,
                 100.0 * n / max(n_true, 1), count))


if __name__ == "__main__":
  main()
