"""The benchmark's figures, as in the paper (matplotlib, Agg backend).

* :func:`plot_r_histograms`: histograms of r per resolution for the network
  and charge flipping (the paper's Fig. 3);
* :func:`plot_r_per_cycle`: mean r of the first trial against the recycling
  cycle, one curve per resolution (Fig. 4A);
* :func:`plot_solved_per_trial`: cumulative fraction solved against the
  number of trials, one curve per resolution (Fig. 4B).
"""
from __future__ import absolute_import, division, print_function

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from phai_cctbx import benchmark  # noqa: E402

PHAI_COLOUR = "#1f77b4"
CF_COLOUR = "#d62728"
DS_COLOUR = "#ff7f0e"
AUTO_COLOUR = "#2ca02c"
#: (column prefix, label, colour) of each method in the histograms.
METHODS = (("phai", "network alone", PHAI_COLOUR),
           ("ds", "dual-space alone", DS_COLOUR),
           ("auto", "phai.solve (auto)", AUTO_COLOUR),
           ("cf", "smtbx state machine", CF_COLOUR))


def solved_label(rows, key, label):
  """The legend of one method's histogram: the share solved of the structures
  it was run on, from their ``<key>_solved`` flags as in the summary (a
  refused one, which has no r, counts as not solved), and how many it refused."""
  tried = [r for r in rows if r.get(key + "_solved") is not None]
  if not tried:
    return None
  share = benchmark._fraction([r[key + "_solved"] for r in tried])
  refused = sum(1 for r in tried if r.get(key + "_r") is None)
  text = "%s: %d%% solved" % (label, round(100.0 * share))
  return text + (", %d refused" % refused if refused else "")


def plot_r_histograms(file_name, rows, d_mins, solved_r=benchmark.SOLVED_R):
  """Histograms of r: a row per method, a column per resolution (the paper's
  Fig. 3); returns the file name."""
  methods = [m for m in METHODS if any(r.get(m[0] + "_r") is not None for r in rows)]
  n = max(len(d_mins), 1)
  m = max(len(methods), 1)
  fig, axes = plt.subplots(m, n, figsize=(3.4 * n, 2.2 * m), squeeze=False,
                           sharex=True, sharey=True)
  bins = np.linspace(-1.0, 1.0, 41)
  for i, (key, label, colour) in enumerate(methods):
    for ax, d in zip(axes[i], d_mins):
      sel = [r for r in rows if abs(r["d_min"] - d) < 1e-9]
      values = [r[key + "_r"] for r in sel if r.get(key + "_r") is not None]
      legend = solved_label(sel, key, label)
      if values or legend:
        ax.hist(values, bins=bins, color=colour, label=legend)
        ax.legend(fontsize=7, loc="upper left")
      ax.axvline(solved_r, color="k", lw=0.8, ls="--")
      if i == 0:
        ax.set_title("d_min %.2f A (%d structures)" % (d, len(sel)), fontsize=9)
      if i == len(methods) - 1:
        ax.set_xlabel("r")
    axes[i][0].set_ylabel("structures")
  fig.tight_layout()
  fig.savefig(file_name, dpi=120)
  plt.close(fig)
  return file_name


def _curves_per_resolution(file_name, curves, xlabel, ylabel, ylim):
  """One line per resolution (y against 1, 2, ...); None when no curve has data."""
  curves = [(d, c) for d, c in curves if c]
  if not curves:
    return None
  fig, ax = plt.subplots(figsize=(4.5, 3.4))
  for d, c in curves:
    ax.plot(np.arange(1, len(c) + 1), c, marker="o", ms=3, label="d_min %.2f A" % d)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_ylim(*ylim(curves))
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(file_name, dpi=120)
  plt.close(fig)
  return file_name


def plot_r_per_cycle(file_name, rows, d_mins):
  """Mean r of the first trial against the recycling cycle; None without data."""
  return _curves_per_resolution(
    file_name, [(d, benchmark.mean_r_per_cycle(rows, d)) for d in d_mins],
    "recycling cycle", "mean r (first trial)",
    lambda curves: (min(0.0, min(min(c) for _, c in curves)), 1.02))


def plot_solved_per_trial(file_name, rows, d_mins, solved_r=benchmark.SOLVED_R):
  """Cumulative fraction solved against trials; None without data."""
  return _curves_per_resolution(
    file_name, [(d, benchmark.solved_after_trials(rows, d, solved_r)) for d in d_mins],
    "trials", "fraction solved (r > %.2f)" % solved_r, lambda curves: (0, 1.02))
