"""Wall-clock time of one phai.solve run, imports included (a benchmark, not a test).

    python regression/benchmark_solve_speed.py [--repeats 3] [--published]
    python regression/benchmark_solve_speed.py --structures DIR [--d-min 1.0]

Runs the installed ``phai.solve`` on the shipped example (epoxide, HKLF 4,
P 1 21/n 1) with the default trials and cycles, and prints the median wall
time and how it splits (imports and reading, phasing, writing).  With
``--published`` it also times a network of the published size (42.4 M
parameters; randomly initialised, since speed does not depend on the values).
With ``--structures`` it times the whole command with default settings on
|F| calculated at ``--d-min`` from every structure CIF in DIR (written as a
SHELX HKLF 4 file with the cell and space group on the command line), and
prints each time, the verdict and the median.
Set OMP_NUM_THREADS / taskset to measure on a given number of cores.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "phai_cctbx", "examples")


def time_run(extra, workdir):
  exe = shutil.which("phai.solve")
  if exe is None:
    raise SystemExit("phai.solve is not on PATH: pip install the package first")
  prefix = os.path.join(workdir, "speed")
  for ext in (".mtz", ".fcf", ".ccp4", ".json", ".log", "_extended.mtz", ".res", ".ins",
              ".hkl", "_model.cif"):
    if os.path.exists(prefix + ext):
      os.remove(prefix + ext)
  t0 = time.time()
  subprocess.run([exe, os.path.join(EXAMPLE, "epoxide.hkl"), os.path.join(EXAMPLE, "epoxide.ins"),
                  "output.prefix=" + prefix] + extra, check=True, capture_output=True)
  wall = time.time() - t0
  summary = json.load(open(prefix + ".json"))
  return wall, summary


def time_structures(folders, d_min, work):
  """Whole-command wall time on calculated data of each structure CIF."""
  import glob
  import phai_cctbx  # noqa: F401
  from phai_cctbx import benchmark
  exe = shutil.which("phai.solve")
  files = sorted(f for d in folders for f in glob.glob(os.path.join(d, "*.cif")))
  walls = []
  for path in files:
    xs = benchmark.read_structure(path)
    f = benchmark.structure_factors(xs, d_min).amplitudes()
    from cctbx.array_family import flex
    i = f.f_as_f_sq()
    i = i.customized_copy(data=i.data() * (9999.0 / flex.max(i.data())))
    i = i.customized_copy(sigmas=i.data() * 0.02 + 0.5)
    name = os.path.splitext(os.path.basename(path))[0]
    hkl = os.path.join(work, name + ".hkl")
    with open(hkl, "w") as out:
      i.export_as_shelx_hklf(out, normalise_if_format_overflow=True)
    cs = xs.crystal_symmetry()
    prefix = os.path.join(work, name + "_phai")
    t0 = time.time()
    proc = subprocess.run(
      [exe, hkl, "unit_cell=%s" % " ".join("%.4f" % x for x in cs.unit_cell().parameters()),
       "space_group=%s" % cs.space_group_info().type().lookup_symbol(),
       "output.prefix=" + prefix], capture_output=True, text=True)
    wall = time.time() - t0
    verdict = json.load(open(prefix + ".json"))["verdict"] if proc.returncode == 0 \
      else "error: " + (proc.stderr or proc.stdout).strip().splitlines()[-1][:120]
    walls.append(wall)
    print("%-45s %5.1f s  %s" % (name[:45], wall, verdict), flush=True)
  print("median wall time %.1f s over %d structures at d_min %.2f A (max %.1f s)"
        % (statistics.median(walls), len(walls), d_min, max(walls)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--published", action="store_true")
  parser.add_argument("--structures", nargs="*", default=None)
  parser.add_argument("--d-min", type=float, default=1.0)
  args = parser.parse_args()
  work = tempfile.mkdtemp()
  if args.structures:
    time_structures(args.structures, args.d_min, work)
    shutil.rmtree(work)
    return
  # The network alone (phasing.method=network): with the default hybrid
  # search, dual-space phasing solves this example before the network runs.
  cases = [("shipped default model", ["phasing.method=network"])]
  if args.published:
    import phai_cctbx  # noqa: F401  (cctbx before torch)
    import torch
    from phai_cctbx.model import PhAINet, PUBLISHED
    path = os.path.join(work, "published_size.pth")
    torch.save(PhAINet(PUBLISHED).state_dict(), path)
    cases.append(("published size (42.4 M parameters)",
                  ["model.weights=" + path, "phasing.method=network"]))
  print("cores: %s, OMP_NUM_THREADS=%s" % (os.cpu_count(), os.environ.get("OMP_NUM_THREADS", "unset")))
  for name, extra in cases:
    walls, phasing = [], []
    for _ in range(args.repeats):
      wall, summary = time_run(extra, work)
      walls.append(wall)
      phasing.append(summary.get("timings_s", {}).get("phasing", float("nan")))
    print("%-38s wall %.1f s (median of %d; min %.1f), phasing %.1f s"
          % (name, statistics.median(walls), len(walls), min(walls), statistics.median(phasing)))
  shutil.rmtree(work)


if __name__ == "__main__":
  main()
