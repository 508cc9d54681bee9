"""The learning curve of a weights file: validation r and real-structure
solve rates against the examples seen.

    python -m phai_cctbx.training.learning_curve [WEIGHTS] [benchmark=BENCH.json[:EXAMPLES] ...]
        [plot=learning_curve.png]

The validation points come from the weights' card (``card["curve"]``, written
by the trainer on its fixed synthetic validation set).  Real-structure points
are the solve rates that ``phai.benchmark`` measured with the weights at some
number of examples seen; they are kept in ``card["benchmark_curve"]`` (one dict
per point: ``examples``, ``n_p21c``, ``p21c`` and, where measured, ``n_all``,
``all``, each a fraction solved per d_min).  Each ``benchmark=`` adds the point of a
``phai.benchmark`` JSON (run with these weights, or with earlier weights of the
same training when ``:EXAMPLES`` gives the examples they had seen).
"""
import json
import sys

from phai_cctbx.benchmark import SOLVED_R, summarise


def _d_key(d):
  return "%.2f" % float(d)


def validation_points(card):
  """[(examples, {d_min: (mean r, fraction solved)})] from the training curve, in order."""
  out = []
  for point in card.get("curve", []):
    val = point.get("validation") or {}
    if val:
      out.append((int(point["examples"]),
                  {_d_key(d): (v["mean_r"], v["solved"]) for d, v in val.items()}))
  return sorted(out, key=lambda p: p[0])


def benchmark_point(rows, examples):
  """A real-structure point from ``phai.benchmark`` rows: fractions solved per
  d_min for the P2_1/c structures (not expanded from a supergroup) and for
  all, counted as the benchmark's own summary counts them."""
  point = {"examples": int(examples)}
  for name, keep in (("p21c", lambda r: not r.get("supergroup")), ("all", lambda r: True)):
    sel = [r for r in rows if keep(r) and r.get("phai_solved") is not None]
    if not sel:
      continue
    summary = summarise(sel, sorted({r["d_min"] for r in sel}))
    point["n_" + name] = len({r["structure"] for r in sel})
    point[name] = {_d_key(s["d_min"]): s["phai_fraction_solved"] for s in summary}
  return point


def benchmark_points(card):
  """The card's real-structure points, ordered by examples seen."""
  return sorted(card.get("benchmark_curve", []), key=lambda p: p["examples"])


def format_table(card):
  """The learning curve as text lines: validation r and solved, then the
  real-structure solve rates at the points where they were measured."""
  lines = ["%12s  %-26s %-22s" % ("examples", "validation mean r", "validation solved")]
  for examples, val in validation_points(card):
    ds = sorted(val)
    lines.append("%12d  %-26s %-22s" % (
      examples, " / ".join("%.3f" % val[d][0] for d in ds),
      " / ".join("%3.0f%%" % (100 * val[d][1]) for d in ds)))
  real = benchmark_points(card)
  if real:
    lines.append("")
    lines.append("%12s  %-26s %-22s" % ("examples", "real P2_1/c solved", "all real solved"))
    for p in real:
      def fmt(name):
        if name not in p:
          return "-"
        return "%s (%d)" % (" / ".join("%3.0f%%" % (100 * p[name][d]) for d in sorted(p[name])),
                            p["n_" + name])
      lines.append("%12d  %-26s %-22s" % (p["examples"], fmt("p21c"), fmt("all")))
  return lines


def plot(card, file_name):
  """Two panels against examples seen: validation mean r, and fraction solved
  (validation lines, real-structure markers); grey lines where a training run
  began.  Returns the file name."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  val = validation_points(card)
  real = benchmark_points(card)
  d_keys = sorted({d for _, v in val for d in v} | {d for p in real for d in p.get("p21c", {})})
  colours = dict(zip(d_keys, ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]))
  fig, (ax_r, ax_s) = plt.subplots(1, 2, figsize=(9, 3.4))
  for d in d_keys:
    pts = [(x / 1e6, v[d]) for x, v in val if d in v]
    if pts:
      ax_r.plot([p[0] for p in pts], [p[1][0] for p in pts], marker="o", ms=2,
                color=colours[d], label="d_min %s A" % d)
      ax_s.plot([p[0] for p in pts], [100 * p[1][1] for p in pts], ls="--", lw=1,
                color=colours[d], label="validation %s A" % d)
    rpts = [(p["examples"] / 1e6, p["p21c"][d]) for p in real if d in p.get("p21c", {})]
    if rpts:
      ax_s.plot([p[0] for p in rpts], [100 * p[1] for p in rpts], marker="s", ms=5, ls="-",
                color=colours[d], label="real P2_1/c %s A" % d)
  for ax in (ax_r, ax_s):  # where each training run (or resumption) began
    for run in card.get("runs", [])[1:]:
      ax.axvline(run.get("from_examples", 0) / 1e6, color="0.8", lw=0.6, zorder=0)
  ax_r.set_xlabel("examples seen (millions)")
  ax_r.set_ylabel("validation mean r (1 trial)")
  ax_r.legend(fontsize=7)
  ax_s.set_xlabel("examples seen (millions)")
  ax_s.set_ylabel("solved (r > %.2f), %%" % SOLVED_R)
  ax_s.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(file_name, dpi=120)
  plt.close(fig)
  return file_name


def main(argv=None):
  import phai_cctbx  # noqa: F401  (cctbx before torch)
  from phai_cctbx.weights import default_weights_path, read_weights
  argv = sys.argv[1:] if argv is None else argv
  paths = [a for a in argv if "=" not in a]
  options = [a.split("=", 1) for a in argv if "=" in a]
  _, _, _, card = read_weights(paths[0] if paths else default_weights_path())
  card = dict(card)
  points = list(card.get("benchmark_curve", []))
  for key, value in options:
    if key == "benchmark":  # BENCH.json, or BENCH.json:EXAMPLES for other weights than these
      file_name, _, examples = value.partition(":")
      with open(file_name) as f:
        rows = json.load(f)["rows"]
      points.append(benchmark_point(rows, int(examples) if examples else card.get("examples_seen", 0)))
  card["benchmark_curve"] = points
  print("\n".join(format_table(card)))
  plot_file = dict(options).get("plot")
  if plot_file:
    print("learning curve plotted in %s" % plot(card, plot_file))


if __name__ == "__main__":
  main()
