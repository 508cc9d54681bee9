"""phai.benchmark: the paper's test, PhAI beside charge flipping, in one command."""
from __future__ import absolute_import, division, print_function

import dataclasses
import importlib.resources
import os
import time

from libtbx import group_args
from libtbx.program_template import ProgramTemplate
from libtbx.utils import Sorry

import phai_cctbx
from phai_cctbx import benchmark

DEFAULT_PREFIX = "phai_benchmark"


def add_positional_structures(parser):
  """Folders and .cif files given without a keyword become ``structures``.

  For ``iotbx.cli_parser.run_program(custom_process_arguments=...)``.
  """
  ns = parser.namespace
  others = list(getattr(ns, "dir", None) or []) + list(getattr(ns, "unknown", None) or [])
  extra = [f for f in (getattr(ns, "files", None) or []) if f.lower().endswith(".cif")]
  for value in others:
    if os.path.isdir(value):
      extra.append(value)
    elif not value.startswith("-"):
      raise Sorry("Not a file, folder or parameter: %s" % value)
  if hasattr(ns, "unknown"):
    ns.unknown = [u for u in (ns.unknown or []) if u not in extra]
  if not extra:
    return
  params = parser.working_phil.extract()
  params.structures = list(params.structures or []) + [os.path.abspath(p) for p in extra]
  parser.working_phil = parser.master_phil.format(python_object=params)


class Program(ProgramTemplate):
  program_name = "phai.benchmark"
  description = """
The PhAI paper's test on your own structures, beside cctbx's charge flipping.

For every structure CIF in a folder and every resolution, |F| are calculated
from the atoms and displacement parameters, phased by the network (the code
path of phai.solve) and by charge flipping (smtbx), both timed, and scored by
the paper's r (max over the 8 origin shifts); solved means r > 0.95.

  phai.benchmark structures/ d_min="1.0 1.6 2.0" output.prefix=bench
  phai.benchmark structures/ phai.trials=15 phai.phase_extension=True
  phai.benchmark structures/ data.remove_fraction=0.1
  phai.benchmark experimental.reflections=epoxide.hkl experimental.structure=epoxide.cif

Writes PREFIX.csv (one row per structure and resolution), PREFIX_summary.csv
(per resolution), PREFIX.json (all of it, with r per trial and per cycle) and
PREFIX_r_histograms.png, PREFIX_r_per_cycle.png, PREFIX_solved_per_trial.png.
A CIF that cannot be used is reported and skipped.
"""
  datatypes = ["phil"]
  master_phil_str = importlib.resources.files("phai_cctbx.phil") \
    .joinpath("benchmark.phil").read_text()

  # --- checks ---------------------------------------------------------------

  def _experimental(self):
    """(reflections, structure, labels) of each experimental data set."""
    e = self.params.experimental
    refl = [f for f in (e.reflections or []) if f]
    struct = [f for f in (e.structure or []) if f]
    labels = [l for l in (e.labels or []) if l]
    if len(refl) != len(struct):
      raise Sorry("Give one experimental.structure per experimental.reflections "
                  "(%d reflection files, %d structures)." % (len(refl), len(struct)))
    if labels and len(labels) != len(refl):
      raise Sorry("Give experimental.labels once per reflections file or not at all.")
    return [(r, s, labels[i] if labels else None) for i, (r, s) in enumerate(zip(refl, struct))]

  def output_files(self):
    """File names this run writes, by kind."""
    prefix = self.params.output.prefix or DEFAULT_PREFIX
    files = {"table_csv": prefix + ".csv", "summary_csv": prefix + "_summary.csv",
             "json": prefix + ".json"}
    if self.params.plots:
      files["r_histograms_png"] = prefix + "_r_histograms.png"
      files["r_per_cycle_png"] = prefix + "_r_per_cycle.png"
      files["solved_per_trial_png"] = prefix + "_solved_per_trial.png"
    return files

  def validate(self):
    p = self.params
    structures = [s for s in (p.structures or []) if s]
    if not structures and not self._experimental():
      raise Sorry("Give a folder of structure CIFs (phai.benchmark FOLDER) or "
                  "experimental.reflections and experimental.structure.")
    for path in structures:
      if not os.path.exists(path):
        raise Sorry("Not found: %s (give a folder of CIFs or a CIF file)." % path)
    if structures and not benchmark.find_structures(structures):
      raise Sorry("No .cif files in %s." % ", ".join(structures))
    for reflections, structure, _ in self._experimental():
      for path in (reflections, structure):
        if not os.path.isfile(path):
          raise Sorry("Not found: %s" % path)
    if not p.d_min:
      raise Sorry("Give at least one resolution: d_min=\"1.0 1.6 2.0\".")
    if any(d is None or d <= 0 for d in p.d_min):
      raise Sorry("d_min values must be positive (Å).")
    for name, value in (("phai.trials", p.phai.trials), ("phai.cycles", p.phai.cycles),
                        ("phai.min_reflections", p.phai.min_reflections),
                        ("charge_flipping.max_solving_iterations",
                         p.charge_flipping.max_solving_iterations),
                        ("charge_flipping.max_attempts", p.charge_flipping.max_attempts)):
      if value is None or value < 1:
        raise Sorry("%s must be a positive integer (got %s)." % (name, value))
    if isinstance(p.nproc, int) and p.nproc < 1:
      raise Sorry("nproc must be a positive integer or Auto.")
    if not 0 <= (p.data.remove_fraction or 0) < 1:
      raise Sorry("data.remove_fraction must be a fraction from 0 to below 1.")
    if p.solved_r is None or not -1 < p.solved_r <= 1:
      raise Sorry("solved_r must lie between -1 and 1.")
    if not (p.phai.enabled or p.charge_flipping.enabled):
      raise Sorry("Both phai.enabled and charge_flipping.enabled are False: nothing to run.")
    if p.model.weights is not None and not os.path.isfile(p.model.weights):
      raise Sorry("Weights file not found: %s" % p.model.weights)
    if not p.output.overwrite:
      existing = [f for f in self.output_files().values() if os.path.exists(f)]
      if existing:
        raise Sorry("%s exists: choose another output.prefix or set "
                    "output.overwrite=True." % existing[0])

  # --- running --------------------------------------------------------------

  def settings(self):
    p = self.params
    return benchmark.Settings(
      d_min=tuple(float(d) for d in p.d_min),
      phai=bool(p.phai.enabled), trials=p.phai.trials, cycles=p.phai.cycles,
      min_reflections=p.phai.min_reflections,
      phase_extension=bool(p.phai.phase_extension),
      dual_space=bool(p.dual_space.enabled), auto=bool(p.auto.enabled),
      dual_space_starts=p.dual_space.starts,
      charge_flipping=bool(p.charge_flipping.enabled),
      cf_max_solving_iterations=p.charge_flipping.max_solving_iterations,
      cf_max_attempts=p.charge_flipping.max_attempts,
      cf_normalise=bool(p.charge_flipping.normalise),
      remove_fraction=float(p.data.remove_fraction or 0.0),
      supergroups=p.data.supergroups, random_seed=p.random_seed,
      solved_r=p.solved_r, composition=bool(p.data.composition),
      guess_composition=bool(p.data.guess_composition))

  def load_network(self):
    """(model or None, note): the network, or why its columns stay empty.

    Weights given explicitly must load; missing default weights only leave
    the network's columns empty.
    """
    p = self.params
    if not p.phai.enabled:
      return None, "phai.enabled=False: network columns not computed"
    from phai_cctbx import weights
    if p.model.weights is None and not weights.default_weights_available():
      return None, ("PhAI columns unavailable: no trained default weights are "
                    "installed; give model.weights=PATH (e.g. PhAI_model.pth)")
    return weights.load_model(p.model.weights), None

  def _progress(self, done, total, result):
    name = os.path.basename(result["file"])
    if result["skipped"]:
      label = "skipped: %s" % result["skipped"]
    else:
      parts = []
      for row in result["rows"]:
        parts.append("%.1f:%s" % (row["d_min"], "/".join(
          "-" if row.get(k) is None else "%.2f" % row[k]
          for k in ("phai_r", "ds_r", "auto_r", "cf_r"))))
      label = "%s  r network/dual-space/auto/smtbx %s" % (name, " ".join(parts))
    print(benchmark.progress_line(done, total, label), file=self.logger)
    self.logger.flush()

  def run(self):
    p = self.params
    t0 = time.time()
    c0 = benchmark.cpu_seconds()
    settings = self.settings()
    model, self.model_note = self.load_network()
    tasks = [("structure", path)
             for path in benchmark.find_structures([s for s in (p.structures or []) if s])]
    tasks += [("experimental", e) for e in self._experimental()]
    nproc = p.nproc if isinstance(p.nproc, int) else (os.cpu_count() or 1)
    nproc = max(1, min(nproc, len(tasks)))
    print("Benchmark: %d structure(s), d_min %s, %d process(es)" % (
      len(tasks), " ".join("%.2f" % d for d in settings.d_min), nproc), file=self.logger)
    if model is not None:
      print("  network: %s; %d trial(s) of up to %d cycles" % (
        getattr(model, "source", "(given)"), settings.trials, settings.cycles),
        file=self.logger)
    if self.model_note:
      print("  %s" % self.model_note, file=self.logger)
    if settings.dual_space:
      print("  dual-space alone: %d random starts (phai.solve phasing.method="
            "dual_space)" % settings.dual_space_starts, file=self.logger)
    if settings.auto and model is not None:
      print("  phai.solve default: phasing.method=auto", file=self.logger)
    if settings.charge_flipping:
      print("  smtbx state machine: weak-reflection-improved flipping, "
            "%d iterations x %d attempts" % (settings.cf_max_solving_iterations,
                                             settings.cf_max_attempts), file=self.logger)
    print("", file=self.logger)
    results = benchmark.run_all(tasks, settings, model=model, nproc=nproc,
                                progress=self._progress)
    rows = [row for r in results for row in r["rows"]]
    skipped = [{"file": r["file"], "reason": r["skipped"]} for r in results if r["skipped"]]
    summary = benchmark.summarise(rows, settings.d_min)
    self.files = self.output_files()
    seconds, cpu = time.time() - t0, benchmark.cpu_seconds() - c0
    self._write(rows, summary, skipped, settings, model, nproc, seconds, cpu)
    print("", file=self.logger)
    print("Time: %.1f s wall clock, %.1f s CPU (usr+sys of this process and its "
          "worker processes; the job's closing usr+sys line counts this process "
          "only)" % (seconds, cpu), file=self.logger)
    if skipped:
      print("Skipped %d file(s):" % len(skipped), file=self.logger)
      for s in skipped:
        print("  %s" % s["reason"], file=self.logger)
      print("", file=self.logger)
    print("Summary per resolution (solved: r > %.2f)" % settings.solved_r, file=self.logger)
    for line in benchmark.format_summary(summary):
      print("  " + line, file=self.logger)
    if self.model_note:
      print("  (%s)" % self.model_note, file=self.logger)
    print("", file=self.logger)
    for kind, name in sorted(self.files.items()):
      print("Wrote %s" % name, file=self.logger)
    self.rows, self.summary, self.skipped = rows, summary, skipped

  def _write(self, rows, summary, skipped, settings, model, nproc, seconds, cpu_seconds=None):
    files = self.files
    benchmark.write_csv(files["table_csv"], rows, benchmark.COLUMNS)
    benchmark.write_csv(files["summary_csv"], summary, benchmark.SUMMARY_COLUMNS)
    if self.params.plots:
      from phai_cctbx import benchmark_plots
      benchmark_plots.plot_r_histograms(files["r_histograms_png"], rows,
                                        settings.d_min, settings.solved_r)
      for kind, plot in (("r_per_cycle_png", benchmark_plots.plot_r_per_cycle),
                         ("solved_per_trial_png", benchmark_plots.plot_solved_per_trial)):
        if plot(files[kind], rows, settings.d_min) is None:
          del files[kind]
    document = {
      "program": self.program_name,
      "version": phai_cctbx.__version__,
      "settings": dataclasses.asdict(settings),
      "network": getattr(model, "source", None) if model is not None else None,
      "network_note": self.model_note,
      "nproc": nproc,
      "seconds": seconds,
      "cpu_seconds": cpu_seconds,
      "columns": list(benchmark.COLUMNS),
      "summary": summary,
      "solved_after_trials": {"%.2f" % d: benchmark.solved_after_trials(rows, d, settings.solved_r)
                              for d in settings.d_min},
      "mean_r_per_cycle": {"%.2f" % d: benchmark.mean_r_per_cycle(rows, d)
                           for d in settings.d_min},
      "rows": rows,
      "skipped": skipped,
      "files": files,
    }
    benchmark.write_json(files["json"], document)

  def get_results(self):
    return group_args(rows=getattr(self, "rows", []),
                      summary=getattr(self, "summary", []),
                      skipped=getattr(self, "skipped", []),
                      files=getattr(self, "files", {}),
                      network_note=getattr(self, "model_note", None))
