"""The paper's test: PhAI beside dual-space phasing on structures with known phases.

For each structure (a CIF with atoms and displacement parameters) and each
resolution, |F| are calculated with cctbx and phased, each way timed, through
:func:`phai_cctbx.solve.solve` (the code path of phai.solve):

* ``phai_*``: the network alone (``method="network"``);
* ``ds_*``: dual-space phasing alone from random starts
  (``method="dual_space"``, as many starts as phai.solve's default);
* ``auto_*``: phai.solve's default (``method="auto"``);
* ``cf_*``: an extra, smtbx's charge-flipping state machine
  (:mod:`phai_cctbx.charge_flipping`) as Olex2 users run it.

All are scored with the paper's r (:func:`phai_cctbx.reflection_set.sign_correlation`,
the maximum over the 8 origins of P 1 21/c 1) against the true phases on the
network's reflection list, weighted by the true |F|; a structure counts as
solved at r > 0.95.

r is taken over the reflections given to the methods ("measured": those of
the list within d_min, less any removed at random) and, for the network, also
over every reflection of the list (phase extension: the true F of the whole
list are calculated for that).  The list's 2/m duplicates (l = 0, h < 0) and
its P2_1/c absences are left out of both.

In the experimental mode the amplitudes are measured ones and the "true"
phases those of the refined structure.

Everything here is a plain function of its inputs so that structures can be
spread over worker processes (:func:`run_all`).
"""
from __future__ import absolute_import, division, print_function

import csv
import dataclasses
import io
import json
import math
import multiprocessing
import os
import re
import time
import zlib

import numpy as np

import phai_cctbx  # noqa: F401  (cctbx before torch, in workers too)
import iotbx.cif
from cctbx import xray
from cctbx.array_family import flex
from libtbx.utils import Sorry

from phai_cctbx import charge_flipping, reflection_set, search
from phai_cctbx import symmetry as symmetry_module

#: r above which a structure counts as solved (the paper's criterion).
SOLVED_R = 0.95

#: Columns of the table per structure and resolution (CSV order).
COLUMNS = (
  "structure",            # file name without .cif
  "space_group",          # as in the CIF
  "space_group_number",
  "supergroup",           # True when expanded to a P2_1/c subgroup
  "n_atoms",              # atoms in the asymmetric unit
  "d_min",                # resolution (A)
  "n_reflections",        # unique reflections given to both methods
  "n_on_list",            # of those, on the network's reflection list
  "completeness",         # of the data given, to d_min
  "r_fobs_fcalc",         # experimental mode: r(|Fobs|, |Fcalc|)
  "data_class",           # experimental mode: 'fine' or 'poor'
  "phai_r",               # r over the measured reflections of the list
  "phai_r_all",           # r over all reflections of the list (phase extension)
  "phai_solved",          # phai_r > 0.95
  "phai_r_first_trial",   # r of the first trial (started from zero phases)
  "phai_first_solved_trial",  # 1-based trial that first reaches r > 0.95
  "phai_best_trial",      # 1-based trial chosen by the figure of merit
  "phai_fom",
  "phai_verdict",
  "phai_cycles",          # recycling cycles the chosen trial ran
  "phai_seconds",
  "ds_r",                 # dual-space alone: r over the measured reflections of the list
  "ds_solved",
  "ds_fom",               # its figure of merit (phai_cctbx.search)
  "ds_seconds",
  "auto_r",               # phai.solve's default
  "auto_solved",
  "auto_fom",
  "auto_verdict",
  "auto_chosen",          # the candidate chosen, e.g. "dual-space random 3"
  "auto_seconds",
  "cf_r",                 # smtbx state machine, r over the measured reflections
  "cf_solved",            # cf_r > 0.95
  "cf_found",             # charge flipping reported a solution itself
  "cf_cc",                # its correlation-map peak height
  "cf_seconds",
  "note",
)

#: Columns of the summary per resolution.
SUMMARY_COLUMNS = (
  "d_min", "n_structures",
  "phai_fraction_solved", "phai_fraction_solved_first_trial",
  "phai_median_r", "phai_median_r_all", "phai_median_seconds",
  "ds_fraction_solved", "ds_median_r", "ds_median_seconds",
  "auto_fraction_solved", "auto_median_r", "auto_median_seconds",
  "auto_called_solved", "auto_called_solved_correct",
  "cf_fraction_solved", "cf_median_r", "cf_median_seconds",
)


@dataclasses.dataclass
class Settings:
  """What to run; mirrors the program's PHIL parameters."""
  d_min: tuple = (1.0, 1.6, 2.0)
  phai: bool = True
  trials: int = 8
  cycles: int = 16
  min_reflections: int = 10
  phase_extension: bool = False
  dual_space: bool = True
  auto: bool = True
  dual_space_starts: int = 16
  charge_flipping: bool = True
  cf_max_solving_iterations: int = 500
  cf_max_attempts: int = 5
  cf_normalise: bool = False
  remove_fraction: float = 0.0
  supergroups: str = "expand"      # or "skip"
  random_seed: int = 0
  solved_r: float = SOLVED_R
  composition: bool = True         # the structure's composition to the search
  guess_composition: bool = True   # without it: phai.solve's guess


# --- structures ------------------------------------------------------------------

def find_structures(paths):
  """The CIF files of folders (sorted) and single files, in order, once each."""
  found = []
  for path in paths:
    if os.path.isdir(path):
      names = sorted(n for n in os.listdir(path) if n.lower().endswith(".cif"))
      found.extend(os.path.join(path, n) for n in names)
    else:
      found.append(path)
  seen = set()
  out = []
  for p in found:
    key = os.path.abspath(p)
    if key not in seen:
      seen.add(key)
      out.append(p)
  return out


def _neutral(scattering_type):
  m = re.match(r"[A-Za-z]+", scattering_type)
  return m.group(0) if m else scattering_type


def read_structure(path):
  """The first structure of a CIF as an xray.structure; Sorry if unusable.

  Ions whose form factor cctbx has no table for (e.g. H1+, B3+) are given
  the neutral atom's.
  """
  try:
    reader = iotbx.cif.reader(file_path=path)
    structures = reader.build_crystal_structures()
  except Exception as e:  # any parser or model error: the file is unusable
    raise Sorry("cannot read a structure (%s)" % _one_line(e))
  if not structures:
    raise Sorry("no data block with a cell, symmetry and atoms")
  xs = list(structures.values())[0]
  if xs.scatterers().size() == 0:
    raise Sorry("no atoms")
  missing = set(xs.scattering_type_registry().unassigned_types())
  if missing:
    scatterers = xs.scatterers().deep_copy()
    for sc in scatterers:
      if sc.scattering_type in missing:
        sc.scattering_type = _neutral(sc.scattering_type)
    xs = xray.structure(crystal_symmetry=xs, scatterers=scatterers)
    missing = set(xs.scattering_type_registry().unassigned_types())
    if missing:
      raise Sorry("no form factor for %s" % ", ".join(sorted(missing)))
  return xs


def _one_line(e):
  text = str(e).strip().splitlines()
  return (text[0] if text else type(e).__name__)[:200]


def structure_factors(xs, d_min):
  """Complex f_calc of a structure to d_min (direct summation, no anomalous)."""
  return xs.structure_factors(d_min=d_min, algorithm="direct").f_calc() \
           .as_non_anomalous_array()


def remove_at_random(miller_array, fraction, seed):
  """A copy without a random ``fraction`` of its reflections."""
  if fraction <= 0:
    return miller_array
  rng = np.random.default_rng(seed)
  keep = rng.random(miller_array.size()) >= fraction
  return miller_array.select(flex.bool(keep.tolist()))


def _job_seed(base, path, d_min):
  """A seed per structure and resolution, independent of the order of the run."""
  key = "%s|%.4f" % (os.path.basename(path), d_min)
  return (int(base) * 1000003 + zlib.crc32(key.encode())) % (2 ** 31)


# --- scoring ---------------------------------------------------------------------

class Truth(object):
  """True F of a structure on the reflection list, for scoring.

  Attributes:
    values: (1205,) complex true F in the P 1 21/c 1 frame.
    present: (1205,) bool, reflections with a true F.
    signs: (1205,) +1/-1, the sign of the real part.
    scored: (1205,) bool, reflections that take part in r (no 2/m duplicates,
      no P2_1/c absences).
  """

  def __init__(self, standardisation, f_true):
    values, present = standardisation.map_to_reflection_set(f_true, fill_absent=False)
    self.values = np.asarray(values)
    self.present = np.asarray(present, dtype=bool)
    self.signs = np.where(self.values.real < 0, -1.0, 1.0)
    self.scored = self.present & reflection_set.unique_mask()

  def weights(self, mask=None):
    """True |F| on the scored reflections (and ``mask``), 0 elsewhere."""
    use = self.scored if mask is None else (self.scored & np.asarray(mask, dtype=bool))
    return np.where(use, np.abs(self.values), 0.0)

  def r(self, signs, mask=None):
    """The paper's r of ``signs`` against the truth over ``mask``."""
    return reflection_set.sign_correlation(self.weights(mask), self.signs, signs)


def full_list_d_min(standardisation):
  """The resolution that reaches every reflection of the list in this cell."""
  return float(np.min(standardisation.set_d_spacings())) * (1 - 1e-6)


def measured_on_list(standardisation, f_obs):
  """(1205,) bool: the reflections of the list the data give."""
  _, present = standardisation.map_to_reflection_set(f_obs, fill_absent=False)
  return np.asarray(present, dtype=bool)


def score_phai(result, truth, measured, settings):
  """Columns of the network's result, and its r per trial and per cycle."""
  ph = result.phasing
  best = int(ph.best)
  r_trials = [truth.r(ph.signs[t], measured) for t in range(ph.signs.shape[0])]
  history = np.asarray(ph.history)
  r_cycles = [[truth.r(history[t, c], measured) for c in range(history.shape[1])]
              for t in range(history.shape[0])]
  solved_at = next((i + 1 for i, r in enumerate(r_trials) if r > settings.solved_r), None)
  row = {
    "phai_r": r_trials[best],
    "phai_solved": r_trials[best] > settings.solved_r,
    "phai_r_first_trial": r_trials[0],
    "phai_first_solved_trial": solved_at,
    "phai_best_trial": best + 1,
    "phai_fom": float(ph.fom[best]),
    "phai_verdict": str(getattr(result, "verdict", getattr(ph, "verdict", ""))),
    "phai_cycles": int(np.asarray(ph.cycles_run)[best]),
  }
  if settings.phase_extension:
    row["phai_r_all"] = truth.r(ph.signs[best])
  extra = {"phai_r_per_trial": r_trials, "phai_r_per_cycle": r_cycles}
  return row, extra


def score_charge_flipping(cf, standardisation, truth, measured, settings):
  """Columns of a charge-flipping result."""
  row = {"cf_found": cf.found_solution, "cf_seconds": cf.seconds,
         "cf_cc": cf.cc_peak_height}
  if cf.f_calc is None:
    row["cf_r"] = None
    row["cf_solved"] = False
  else:
    signs, _ = charge_flipping.signs_on_reflection_set(cf.f_calc, standardisation)
    r = truth.r(signs, measured)
    row["cf_r"] = r
    row["cf_solved"] = r > settings.solved_r
  return row


# --- one structure ---------------------------------------------------------------

def cell_composition(xs, f_obs):
  """Element -> atoms per unit cell of ``f_obs``'s cell, from the structure
  ``xs`` (what SFAC/UNIT of a SHELX .ins gives phai.solve)."""
  scale = f_obs.unit_cell().volume() / xs.unit_cell().volume()
  out = {}
  for e, n in xs.unit_cell_content().items():
    out[_neutral(e)] = out.get(_neutral(e), 0.0) + n * scale
  return out


def _phase_with(f_obs, model, settings, seed, method="network", composition=None):
  from phai_cctbx import solve as solve_module
  t0 = time.time()
  result = solve_module.solve(f_obs, model=model, trials=settings.trials,
                              cycles=settings.cycles, random_seed=seed,
                              min_reflections=settings.min_reflections,
                              method=method, dual_space_starts=settings.dual_space_starts,
                              composition=composition if settings.composition else None,
                              guess_composition=settings.guess_composition,
                              log=io.StringIO())
  return result, time.time() - t0


def score_search(result, truth, measured, settings, prefix):
  """Columns of a search result (methods dual_space and auto), and for auto
  the r of every candidate (JSON only)."""
  std = result.standardisation
  r = truth.r(search.list_signs(std, result.f_obs, result.phases), measured)
  row = {prefix + "_r": r, prefix + "_solved": r > settings.solved_r,
         prefix + "_fom": float(result.chosen.fom)}
  extra = {}
  if prefix == "auto":
    row["auto_verdict"] = result.verdict
    row["auto_chosen"] = result.chosen.label
    extra["auto_candidates"] = [dict(c.summary(), r=truth.r(c.signs, measured))
                                for c in result.search.candidates]
  return row, extra


def _phase_one(f_obs, standardisation, truth, settings, model, seed, composition=None):
  """Phase one set of amplitudes by both methods; row columns and extras.
  ``composition``: per cell, for methods auto and dual_space."""
  row, extra, notes = {}, {}, []
  measured = measured_on_list(standardisation, f_obs)
  row["n_reflections"] = int(f_obs.size())
  row["n_on_list"] = int((measured & truth.scored).sum())
  if settings.phai and model is not None:
    try:
      result, seconds = _phase_with(f_obs, model, settings, seed, "network")
      measured_net = np.asarray(getattr(result, "set_measured", measured), dtype=bool)
      cols, more = score_phai(result, truth, measured_net, settings)
      row.update(cols)
      row["phai_seconds"] = seconds
      extra.update(more)
    except Sorry as e:
      # Refused (e.g. too few reflections on the list): not solved.
      row["phai_solved"] = False
      notes.append("phai: %s" % _one_line(e))
  for method, prefix, wanted in (("dual_space", "ds", settings.dual_space),
                                 ("auto", "auto", settings.auto and model is not None)):
    if not wanted:
      continue
    try:
      result, seconds = _phase_with(f_obs, model, settings, seed, method, composition)
      cols, more = score_search(result, truth, measured, settings, prefix)
      row.update(cols)
      row[prefix + "_seconds"] = seconds
      extra.update(more)
    except Sorry as e:
      row[prefix + "_solved"] = False
      notes.append("%s: %s" % (method, _one_line(e)))
  if settings.charge_flipping:
    cf = charge_flipping.run(
      f_obs, max_solving_iterations=settings.cf_max_solving_iterations,
      max_attempts=settings.cf_max_attempts, normalise=settings.cf_normalise,
      random_seed=seed)
    row.update(score_charge_flipping(cf, standardisation, truth, measured, settings))
    if cf.error:
      notes.append("charge flipping: %s" % cf.error)
  return row, extra, notes


def _base_row(name, xs, standardisation):
  sgi = xs.space_group_info()
  return {
    "structure": name,
    "space_group": str(sgi),
    "space_group_number": sgi.type().number(),
    "supergroup": bool(standardisation.is_supergroup),
    "n_atoms": int(xs.scatterers().size()),
  }


def _prepare(xs, settings):
  std = symmetry_module.prepare(xs.crystal_symmetry())
  if std.is_supergroup and settings.supergroups == "skip":
    raise Sorry("%s is a supergroup of P2_1/c (data.supergroups=skip)"
                % xs.space_group_info())
  return std


def _skip_reason(path, e):
  """'file: reason' for a file that could not be used."""
  if isinstance(e, Sorry):
    return "%s: %s" % (os.path.basename(path), _one_line(e))
  return "%s: %s: %s" % (os.path.basename(path), type(e).__name__, _one_line(e))


def benchmark_structure(path, settings, model=None):
  """Rows (one per d_min) for one structure CIF.

  Returns a dict: ``file``, ``rows`` (list of dicts of :data:`COLUMNS` plus
  JSON-only extras) and ``skipped`` (a one-line reason, or None).
  """
  name = os.path.splitext(os.path.basename(path))[0]
  out = {"file": path, "rows": [], "skipped": None}
  try:
    xs = read_structure(path)
    std = _prepare(xs, settings)
    truth_full = None
    if settings.phase_extension:
      truth_full = Truth(std, structure_factors(xs, full_list_d_min(std)))
    for d_min in settings.d_min:
      seed = _job_seed(settings.random_seed, path, d_min)
      f_true = structure_factors(xs, d_min)
      truth = truth_full if truth_full is not None else Truth(std, f_true)
      f_obs = remove_at_random(f_true.as_amplitude_array(), settings.remove_fraction, seed)
      row = _base_row(name, xs, std)
      row["d_min"] = float(d_min)
      row["completeness"] = float(f_obs.completeness())
      cols, extra, notes = _phase_one(f_obs, std, truth, settings, model, seed,
                                      cell_composition(xs, f_obs))
      row.update(cols)
      row.update(extra)
      row["note"] = "; ".join(notes)
      out["rows"].append(row)
  except Exception as e:  # a broken file must not stop the run
    out["skipped"] = _skip_reason(path, e)
    out["rows"] = []
  return out


# --- experimental data -----------------------------------------------------------

def classify_data(completeness, r_fobs_fcalc):
  """The paper's class: 'fine' at completeness >= 85 % and r(|Fobs|,|Fcalc|) > 0.9."""
  return "fine" if (completeness >= 0.85 and r_fobs_fcalc > 0.9) else "poor"


def amplitude_correlation(f_obs, f_calc):
  """Pearson r between |Fobs| and |Fcalc| on their common reflections."""
  fo, fc = f_obs.common_sets(f_calc.amplitudes())
  if fo.size() < 2:
    return 0.0
  return float(flex.linear_correlation(fo.data(), fc.data()).coefficient())


def benchmark_experimental(reflections, structure, settings, model=None,
                           labels=None):
  """Rows (one per d_min) for measured data and the structure refined against it.

  The reflections are read and merged as phai.solve does
  (:mod:`phai_cctbx.data_input`, :mod:`phai_cctbx.amplitudes`), with the
  structure CIF's symmetry; the true phases are those of the structure.
  A d_min finer than the data's own uses all data.
  """
  from phai_cctbx import amplitudes as amplitudes_module
  from phai_cctbx import data_input
  name = "%s/%s" % (os.path.basename(os.path.dirname(os.path.abspath(reflections))),
                    os.path.splitext(os.path.basename(reflections))[0])
  out = {"file": reflections, "rows": [], "skipped": None}
  try:
    xs = read_structure(structure)
    data = data_input.read_data(reflections, labels=labels, symmetry_file=structure)
    f_all = amplitudes_module.prepare_amplitudes(data.miller_array).f_obs
    f_all = f_all.customized_copy(crystal_symmetry=xs.crystal_symmetry()) \
                 .as_non_anomalous_array()
    std = _prepare(xs, settings)
    d_data = f_all.d_min()
    truth_full = None
    if settings.phase_extension:
      truth_full = Truth(std, structure_factors(xs, full_list_d_min(std)))
    for d_min in settings.d_min:
      seed = _job_seed(settings.random_seed, reflections, d_min)
      d_use = max(float(d_min), d_data)
      f_obs = f_all.resolution_filter(d_min=d_use - 1e-6)
      f_obs = remove_at_random(f_obs, settings.remove_fraction, seed)
      f_calc = structure_factors(xs, d_use - 1e-6)
      truth = truth_full if truth_full is not None else Truth(std, f_calc)
      row = _base_row(name, xs, std)
      row["d_min"] = float(d_min)
      row["completeness"] = float(f_obs.completeness())
      row["r_fobs_fcalc"] = amplitude_correlation(f_obs, f_calc)
      row["data_class"] = classify_data(row["completeness"], row["r_fobs_fcalc"])
      cols, extra, notes = _phase_one(f_obs, std, truth, settings, model, seed,
                                      cell_composition(xs, f_obs))
      if d_use > d_min + 1e-6:
        notes.insert(0, "data reach %.2f A only" % d_data)
      row.update(cols)
      row.update(extra)
      row["note"] = "; ".join(notes)
      out["rows"].append(row)
  except Exception as e:  # unusable data must not stop the run
    out["skipped"] = _skip_reason(reflections, e)
    out["rows"] = []
  return out


# --- many structures, over the machine's cores ------------------------------------

def cpu_seconds():
  """usr+sys seconds of this process and of its child processes that ended
  (the worker processes of :func:`run_all` are joined before it returns)."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


_WORKER = {}


def _serialise_model(model):
  if model is None:
    return None
  import torch
  buf = io.BytesIO()
  torch.save(model, buf)
  return buf.getvalue()


def _init_worker(model_bytes, settings):
  import torch
  torch.set_num_threads(1)
  model = None
  if model_bytes is not None:
    model = torch.load(io.BytesIO(model_bytes), weights_only=False)
    model.eval()
  _WORKER["model"] = model
  _WORKER["settings"] = settings


def _work(task):
  kind, args = task
  settings, model = _WORKER["settings"], _WORKER["model"]
  if kind == "experimental":
    return benchmark_experimental(args[0], args[1], settings, model, labels=args[2])
  return benchmark_structure(args, settings, model)


def run_all(tasks, settings, model=None, nproc=1, progress=None, isolate=True):
  """Run tasks over worker processes; results in the order of ``tasks``.

  Args:
    tasks: list of ("structure", path) or ("experimental",
      (reflections, structure, labels)).
    settings: a :class:`Settings`.
    model: the loaded network (or None: no network columns).
    nproc: worker processes.
    progress: callable(n_done, n_total, result) after each task.
    isolate: run in worker processes (spawned, cctbx loaded before torch,
      one torch thread each) even for nproc=1, so that a file that crashes a
      reader (iotbx's CIF parser can crash on some broken files) is reported
      and skipped instead of ending the run.  False runs in this process.
  """
  results = [None] * len(tasks)
  counter = {"done": 0}

  def finished(i, result):
    results[i] = result
    counter["done"] += 1
    if progress:
      progress(counter["done"], len(tasks), result)

  if not isolate:
    _WORKER.update(model=model, settings=settings)
    try:
      for i, task in enumerate(tasks):
        finished(i, _work(task))
    finally:
      _WORKER.clear()
    return results
  _run_isolated(tasks, settings, _serialise_model(model),
                max(1, min(nproc, len(tasks))), finished)
  return results


def _worker_main(conn, model_bytes, settings):
  """A worker: set up once, then run the tasks it is sent until None."""
  _init_worker(model_bytes, settings)
  while True:
    task = conn.recv()
    if task is None:
      break
    conn.send(_work(task))


def _crash_result(task, exitcode):
  path = task[1] if task[0] == "structure" else task[1][0]
  return {"file": path, "rows": [], "skipped": "%s: crashed the process reading or "
          "phasing it (exit code %s; a broken file?)" % (os.path.basename(path), exitcode)}


def _run_isolated(tasks, settings, model_bytes, nproc, finished):
  """Run tasks in ``nproc`` spawned workers, one task at a time each.

  A worker that dies takes only its own task with it: that task is reported
  as skipped and a new worker takes over.
  """
  from multiprocessing.connection import wait
  ctx = multiprocessing.get_context("spawn")
  todo = list(range(len(tasks)))[::-1]

  def start():
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker_main, args=(child, model_bytes, settings),
                       daemon=True)
    proc.start()
    child.close()
    return {"proc": proc, "conn": parent, "task": None}

  def feed(w):
    if todo:
      w["task"] = todo.pop()
      w["conn"].send(tasks[w["task"]])
    else:
      w["task"] = None
      try:
        w["conn"].send(None)
      except (BrokenPipeError, OSError):
        pass

  workers = [start() for _ in range(nproc)]
  try:
    for w in workers:
      feed(w)
    while any(w["task"] is not None for w in workers):
      busy = [w for w in workers if w["task"] is not None]
      wait([w["conn"] for w in busy] + [w["proc"].sentinel for w in busy])
      for k, w in enumerate(workers):
        if w["task"] is None:
          continue
        result = None
        if w["conn"].poll():
          try:
            result = w["conn"].recv()
          except (EOFError, OSError):
            result = None
        if result is not None:
          finished(w["task"], result)
          feed(w)
        elif not w["proc"].is_alive():
          w["proc"].join()
          finished(w["task"], _crash_result(tasks[w["task"]], w["proc"].exitcode))
          w["conn"].close()
          workers[k] = start()
          feed(workers[k])
  finally:
    for w in workers:
      if w["task"] is not None and w["proc"].is_alive():
        w["proc"].terminate()
      w["proc"].join(timeout=30)
      w["conn"].close()


# --- tables ------------------------------------------------------------------------

def _median(values):
  values = [v for v in values if v is not None]
  return float(np.median(values)) if values else None


def _fraction(flags):
  flags = [bool(f) for f in flags if f is not None]
  return float(np.mean(flags)) if flags else None


def summarise(rows, d_mins):
  """The summary per resolution (dicts of :data:`SUMMARY_COLUMNS`)."""
  out = []
  for d in d_mins:
    sel = [r for r in rows if abs(r["d_min"] - d) < 1e-9]
    has_phai = [r for r in sel if r.get("phai_solved") is not None]
    out.append({
      "d_min": float(d),
      "n_structures": len(sel),
      "phai_fraction_solved": _fraction([r["phai_solved"] for r in has_phai]),
      "phai_fraction_solved_first_trial": _fraction(
        [r.get("phai_first_solved_trial") == 1 for r in has_phai]),
      "phai_median_r": _median([r.get("phai_r") for r in sel]),
      "phai_median_r_all": _median([r.get("phai_r_all") for r in sel]),
      "phai_median_seconds": _median([r.get("phai_seconds") for r in sel]),
      "ds_fraction_solved": _fraction([r.get("ds_solved") for r in sel
                                       if "ds_solved" in r]),
      "ds_median_r": _median([r.get("ds_r") for r in sel]),
      "ds_median_seconds": _median([r.get("ds_seconds") for r in sel]),
      "auto_fraction_solved": _fraction([r.get("auto_solved") for r in sel
                                         if "auto_solved" in r]),
      "auto_median_r": _median([r.get("auto_r") for r in sel]),
      "auto_median_seconds": _median([r.get("auto_seconds") for r in sel]),
      "auto_called_solved": sum(1 for r in sel if r.get("auto_verdict") == "solved"),
      "auto_called_solved_correct": sum(1 for r in sel if r.get("auto_verdict") == "solved"
                                        and r.get("auto_solved")),
      "cf_fraction_solved": _fraction([r.get("cf_solved") for r in sel
                                       if "cf_solved" in r]),
      "cf_median_r": _median([r.get("cf_r") for r in sel]),
      "cf_median_seconds": _median([r.get("cf_seconds") for r in sel]),
    })
  return out


def solved_after_trials(rows, d_min, solved_r=SOLVED_R):
  """Cumulative fraction solved against the number of trials at one d_min.

  A structure counts as solved after n trials when one of its first n trials
  reaches r > solved_r (the paper's Fig. 4B).
  """
  curves = [r["phai_r_per_trial"] for r in rows
            if abs(r["d_min"] - d_min) < 1e-9 and r.get("phai_r_per_trial")]
  if not curves:
    return []
  n = max(len(c) for c in curves)
  return [float(np.mean([max(c[:k + 1]) > solved_r for c in curves]))
          for k in range(n)]


def mean_r_per_cycle(rows, d_min, trial=0):
  """Mean r of one trial after each recycling cycle at one d_min (Fig. 4A)."""
  curves = [r["phai_r_per_cycle"][trial] for r in rows
            if abs(r["d_min"] - d_min) < 1e-9 and r.get("phai_r_per_cycle")]
  if not curves:
    return []
  return [float(x) for x in np.mean(np.asarray(curves, dtype=float), axis=0)]


def _csv_value(v):
  if v is None:
    return ""
  if isinstance(v, (bool, np.bool_)):
    return "yes" if v else "no"
  if isinstance(v, float):
    return "%.4f" % v if not math.isnan(v) else ""
  return v


def write_csv(file_name, rows, columns):
  with open(file_name, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for row in rows:
      writer.writerow([_csv_value(row.get(c)) for c in columns])


def _jsonable(v):
  if isinstance(v, dict):
    return {k: _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, (np.bool_,)):
    return bool(v)
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (np.floating, float)):
    return None if math.isnan(float(v)) else float(v)
  return v


def write_json(file_name, document):
  with open(file_name, "w") as f:
    json.dump(_jsonable(document), f, indent=1)
    f.write("\n")


def format_summary(summary, phai_available=True):
  """The summary per resolution as text lines."""
  def fmt(v, pct=False):
    if v is None:
      return "-"
    return "%.0f%%" % (100 * v) if pct else "%.3f" % v
  lines = ["%6s %4s | %-22s | %-22s | %-22s | %-22s" % (
    "", "", "network alone", "dual-space alone", "phai.solve (auto)",
    "smtbx state machine"),
    "%6s %4s | %s | %s | %s | %s" % ("d_min", "n", *(["%6s %7s %7s" % (
      "solved", "med. r", "med. s")] * 4))]
  for s in summary:
    lines.append("%6.2f %4d | %s | %s | %s | %s" % (
      s["d_min"], s["n_structures"], *["%6s %7s %7s" % (
        fmt(s[k + "_fraction_solved"], True), fmt(s[k + "_median_r"]),
        fmt(s[k + "_median_seconds"])) for k in ("phai", "ds", "auto", "cf")]))
  for s in summary:
    if s.get("auto_called_solved"):
      lines.append("%6.2f: phai.solve called %d solved, %d of them with r > the "
                   "threshold" % (s["d_min"], s["auto_called_solved"],
                                  s["auto_called_solved_correct"]))
  return lines


def progress_line(done, total, label, width=30):
  """A text progress bar: ``[=====>    ]  5/41 label``."""
  filled = int(round(width * done / max(total, 1)))
  bar = "=" * max(filled - 1, 0) + (">" if filled < width and filled > 0 else ("=" if filled else ""))
  return "[%-*s] %*d/%d %s" % (width, bar, len(str(total)), done, total, label)
