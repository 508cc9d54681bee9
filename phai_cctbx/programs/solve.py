"""phai.solve: phase measured small-molecule data with PhAI."""
from __future__ import absolute_import, division, print_function

import importlib.resources
import io
import os
import time

import libtbx.phil
from libtbx.program_template import ProgramTemplate
from libtbx.utils import Sorry

import phai_cctbx

#: File extensions taken as the symmetry file when given on the command line.
SYMMETRY_EXTENSIONS = (".ins", ".res")
PHIL_EXTENSIONS = (".eff", ".phil", ".params", ".def")


def file_arguments_as_phil(args):
  """Turn bare file names on the command line into input.* parameters.

  The first data file becomes ``input.reflection_file``; a SHELX .ins/.res,
  or a second file, ``input.symmetry_file``.  Options, ``key=value`` and PHIL
  files (.eff, .phil, .params) pass through unchanged.
  """
  out = []
  have_reflections = any(a.split("=", 1)[0].strip().endswith("reflection_file")
                         for a in args if "=" in a)
  for arg in args:
    if arg.startswith("-") or "=" in arg or arg.lower().endswith(PHIL_EXTENSIONS):
      out.append(arg)
      continue
    ext = os.path.splitext(arg)[1].lower()
    if ext in SYMMETRY_EXTENSIONS or have_reflections:
      out.append("input.symmetry_file=%s" % arg)
    else:
      out.append("input.reflection_file=%s" % arg)
      have_reflections = True
  return out


#: Set by the phai.solve command to the time its process started, so that the
#: run's wall time counts the start-up (imports); None when the program runs
#: inside another Python process, where the time counts from run().
COMMAND_STARTED = None


def process_start_time():
  """The wall-clock time (as time.time()) this process started, or None."""
  try:
    with open("/proc/self/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    started_ticks = float(fields[19])
    return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
  except (OSError, IndexError, ValueError, AttributeError):
    return None


def _version():
  try:
    from libtbx.version import get_version
    cctbx_version = get_version()
  except Exception:
    cctbx_version = None
  text = "phai_cctbx %s" % phai_cctbx.__version__
  if cctbx_version:
    text += " (cctbx %s)" % cctbx_version
  return text


program_citations = libtbx.phil.parse('''
citation {
  article_id = phai
  authors = Larsen AS, Rekis T, Madsen AØ
  title = PhAI: A deep-learning approach to solve the crystallographic phase problem
  journal = Science
  volume = 385
  pages = 522-528
  year = 2024
  doi_id = "10.1126/science.adn2777"
  external = True
}
citation {
  article_id = charge_flipping
  authors = Oszlányi G, Sütő A
  title = Ab initio structure solution by charge flipping
  journal = Acta Cryst.
  volume = A60
  pages = 134-141
  year = 2004
  doi_id = "10.1107/S0108767303027569"
  external = True
}
''')


def wall_times(started, steps, finished):
  """(list of (step, seconds), total), in seconds rounded to 0.01: the steps
  in order, then "other" for the time between them, so that the printed steps
  add up to the printed total exactly."""
  total = round(max(finished - started, 0.0), 2)
  rows = [(name, round(max(seconds, 0.0), 2)) for name, seconds in steps]
  other = round(total - sum(s for n, s in rows), 2)
  if other < 0:   # clock granularity and rounding: the total is never below the steps
    total = round(sum(s for n, s in rows), 2)
    other = 0.0
  rows.append(("other", other))
  return rows, total


class _Tee(object):
  """Writes to the program's logger and keeps a copy for the .log file."""

  def __init__(self, stream):
    self.stream = stream
    self.copy = io.StringIO()

  def write(self, text):
    self.stream.write(text)
    self.copy.write(text)

  def flush(self):
    if hasattr(self.stream, "flush"):
      self.stream.flush()


class Program(ProgramTemplate):
  program_name = "phai.solve"
  version = _version()
  citations = program_citations
  description = """
Phase centrosymmetric small-molecule data (P2_1/c in any setting, and its
supergroups C2/c, Pbca, Pnma, Pbcn, C2/m) with the PhAI neural network, and
write phases and maps for refinement and model building:

  phai.solve data.hkl unit_cell="a b c alpha beta gamma" space_group="P 1 21/n 1" output.prefix=out
  phai.solve data.hkl data.ins                 (cell and symmetry from the .ins/.res)
  phai.solve data.cif                          (COD/CIF reflections, or embedded _shelx_hkl_file)
  phai.solve data.mtz labels=IMEAN,SIGIMEAN model.weights=PhAI_model.pth

Writes PREFIX.mtz (FP SIGFP PHIB FOM FWT PHWT, original space group and
setting), PREFIX.fcf (SHELX LIST 3 with phases, for Olex2), PREFIX.ccp4 (the
density map), PREFIX_extended.mtz (phases of unmeasured reflections),
PREFIX.json and PREFIX.log; and a starting model from the peaks of the map:
PREFIX.res and PREFIX.ins (shelxl PREFIX), PREFIX.hkl (the data, HKLF 4) and
PREFIX_model.cif, when the verdict is "solved" or "probably solved".  The
model's elements come from the composition the input gives (SFAC/UNIT of a
.ins/.res, _chemical_formula_sum or _atom_type of a CIF); elements="C H N O"
or a formula overrides it; build_model=False for phases only.

All parameters with what they mean:
  phai.solve --show-defaults --attributes-level=2
(--show-defaults alone lists the parameters without explanations.)
"""
  datatypes = ["phil"]
  master_phil_str = importlib.resources.files("phai_cctbx.phil").joinpath(
    "solve.phil").read_text()

  OUTPUT_SUFFIXES = (".mtz", ".fcf", ".ccp4", ".json", ".log", "_extended.mtz")

  def _prefix(self):
    p = self.params
    if p.output.prefix:
      return p.output.prefix
    base = os.path.splitext(os.path.basename(p.input.reflection_file or "phai"))[0]
    return base + "_phai"

  def _output_suffixes(self):
    """Every file this run may write; all are checked before any work."""
    from phai_cctbx.starting_model import MODEL_SUFFIXES
    suffixes = list(self.OUTPUT_SUFFIXES)
    if self.params.model_building.build_model:
      suffixes.extend(MODEL_SUFFIXES)
    return suffixes

  def _check_inputs_not_outputs(self, suffixes):
    """Sorry when an output would replace an input file (overwrite or not)."""
    p = self.params
    inputs = [f for f in (p.input.reflection_file, p.input.symmetry_file,
                          p.model.weights) if f and os.path.isfile(f)]
    for suffix in suffixes:
      name = self._prefix() + suffix
      for f in inputs:
        if os.path.exists(name) and os.path.samefile(name, f):
          raise Sorry("output.prefix=%s would overwrite the input file %s: give "
                      "another output.prefix." % (self._prefix(), f))

  def validate(self):
    p = self.params
    if p.input.reflection_file is None:
      raise Sorry("No reflection file: give the data file (SHELX .hkl, CIF, .fcf "
                  "or MTZ) as the first argument.")
    for name in ("trials", "cycles"):
      value = getattr(p.phasing, name)
      if value is None or value < 1:
        raise Sorry("phasing.%s must be a positive integer (got %s)." % (name, value))
    if p.phasing.network_frames is None or p.phasing.network_frames < 1:
      raise Sorry("phasing.network_frames must be a positive integer (1: the "
                  "preferred frame only; got %s)." % p.phasing.network_frames)
    if p.phasing.random_seed is None or p.phasing.random_seed < 0:
      raise Sorry("phasing.random_seed must be zero or positive.")
    if p.phasing.min_reflections is None or p.phasing.min_reflections < 1:
      raise Sorry("phasing.min_reflections must be a positive integer.")
    ds = p.phasing.dual_space
    if ds.starts is None or ds.starts < 0 or ds.cycles is None or ds.cycles < 1:
      raise Sorry("phasing.dual_space.starts must be zero or positive and "
                  "phasing.dual_space.cycles positive.")
    if p.phasing.method == "dual_space" and ds.starts < 1:
      raise Sorry("phasing.method=dual_space needs phasing.dual_space.starts of 1 or more.")
    if ds.recycle is None or ds.recycle < 0:
      raise Sorry("phasing.dual_space.recycle must be zero or positive.")
    if ds.more_starts is None or ds.more_starts < 0:
      raise Sorry("phasing.dual_space.more_starts must be zero or positive.")
    if p.phasing.atom_search.restarts is None or p.phasing.atom_search.restarts < 1:
      raise Sorry("phasing.atom_search.restarts must be at least 1 (got %s); "
                  "phasing.atom_search.enabled=False turns the atom search off."
                  % p.phasing.atom_search.restarts)
    if p.phasing.atom_search.peak_maps is None or p.phasing.atom_search.peak_maps < 0:
      raise Sorry("phasing.atom_search.peak_maps must be zero or positive "
                  "(0: no atom search from map peaks; got %s)."
                  % p.phasing.atom_search.peak_maps)
    if p.phasing.atom_search.peak_rounds is None or p.phasing.atom_search.peak_rounds < 1:
      raise Sorry("phasing.atom_search.peak_rounds must be at least 1 "
                  "(phasing.atom_search.peak_maps=0 turns the stage off; got %s)."
                  % p.phasing.atom_search.peak_rounds)
    if ds.omit_refinement is None or ds.omit_refinement < 0:
      raise Sorry("phasing.dual_space.omit_refinement must be zero or positive "
                  "(0: no omit-map refinement; got %s)." % ds.omit_refinement)
    if ds.sign_combinations is None or not 0 <= ds.sign_combinations <= 12:
      raise Sorry("phasing.dual_space.sign_combinations must be from 0 to 12 "
                  "(2 x 2^N starts; got %s)." % ds.sign_combinations)
    if p.phasing.time_limit is None or p.phasing.time_limit <= 0:
      raise Sorry("phasing.time_limit must be a positive number of seconds.")
    rf = p.output.map_resolution_factor
    if rf is None or not 0.05 <= rf <= 0.5:
      raise Sorry("output.map_resolution_factor must be between 0.05 and 0.5.")
    if p.model.weights is not None and not os.path.isfile(p.model.weights):
      raise Sorry("Weights file not found: %s (give model.weights=PATH to an "
                  "existing file)." % p.model.weights)
    from phai_cctbx.model_building import parse_elements
    parse_elements(p.model_building.elements)
    if p.model_building.z is not None and not p.model_building.z > 0:
      raise Sorry("model_building.z must be a positive number of formula units "
                  "per unit cell (got %s)." % p.model_building.z)
    wavelength = p.model_building.wavelength
    if wavelength is not None and not 0 < wavelength < 10:
      raise Sorry("model_building.wavelength must be in A, between 0 and 10 "
                  "(got %s)." % wavelength)
    from phai_cctbx.outputs import OutputFiles
    suffixes = self._output_suffixes()
    self._check_inputs_not_outputs(suffixes)
    OutputFiles(self._prefix(), p.output.overwrite).check(suffixes)

  def _composition(self, data, log):
    """The composition for the model: elements=, else the input's, else None."""
    from phai_cctbx.model_building import (
      HEAVY_MARGIN, parse_elements)
    given = self.params.model_building.elements
    if given is not None:
      comp = parse_elements(given).with_source("the elements= parameter")
      print("Composition: %s, from the elements= parameter%s" % (
        comp, "" if data.composition is None else
        " (instead of %s from %s)" % (data.composition,
                                      data.composition.source)), file=log)
      return comp
    if data.composition is not None:
      print("Composition: %s%s, from %s" % (
        data.composition, " (unit cell)" if data.composition.per_cell else "",
        data.composition.source), file=log)
      return data.composition
    print("Composition: none in the input and no elements= given; organic "
          "light elements preferred, a heavier element only for a peak %.1f "
          "times oxygen's or more (give elements= to name the elements)"
          % HEAVY_MARGIN, file=log)
    return None

  def _cell_count_choices(self, composition, data, log):
    """Atoms per unit cell for the atom search, likeliest first (more than
    one for a formula without Z; none: it does not run)."""
    from phai_cctbx import atom_search
    p = self.params.phasing
    if not p.atom_search.enabled or p.method == "network":
      return []
    choices, how = atom_search.cell_count_choices(
      composition, self.params.model_building.z or data.facts.z,
      data.miller_array.space_group(), data.miller_array.unit_cell())
    counts = choices[0] if choices else None
    if counts is None and not p.atom_search.guess_composition:
      print("Atom search: not run (%s; give elements= with counts per unit cell, "
            "e.g. elements=\"C24 H20 N4 O8\", or a .ins with SFAC/UNIT)" % how, file=log)
    elif counts is None:
      print("Atom search: %s; counts guessed from the cell where they can be (give "
            "elements= with counts per unit cell, e.g. elements=\"C24 H20 N4 O8\", "
            "or a .ins with SFAC/UNIT)" % how, file=log)
    else:
      print("Atom search: atoms per unit cell from %s" % how, file=log)
    return choices

  def run(self):
    from phai_cctbx import data_input, outputs, starting_model
    from phai_cctbx.solve import solve
    p = self.params
    t0 = time.time()
    started = COMMAND_STARTED if COMMAND_STARTED is not None else t0
    steps = []
    log = _Tee(self.logger)
    print("phai.solve: PhAI phasing (%s)" % self.version.replace(" (", ", ").rstrip(")"),
          file=log)
    print(time.strftime("  started %Y-%m-%d %H:%M:%S"), file=log)
    print("", file=log)
    if started < t0:
      steps.append(("start-up", t0 - started))
    data = data_input.read_data(
      p.input.reflection_file, labels=p.input.labels,
      hklf=None if p.input.hklf == "auto" else int(p.input.hklf),
      symmetry_file=p.input.symmetry_file, unit_cell=p.input.unit_cell,
      space_group=p.input.space_group)
    for line in data.describe():
      print(line, file=log)
    print("", file=log)
    t1 = time.time()
    steps.append(("reading", t1 - t0))
    # A weights file given is loaded now, so that a bad one fails before any
    # work; the shipped weights load when the search first needs the network
    # (torch's import alone takes seconds, and dual-space phasing often
    # solves the data without it).
    model = None
    if p.phasing.method != "dual_space" and p.model.weights is not None:
      from phai_cctbx.weights import load_model   # imports torch
      model = load_model(p.model.weights)
    composition = self._composition(data, log)
    choices = self._cell_count_choices(composition, data, log)
    t_solve = time.time()
    steps.append(("network", t_solve - t1))
    self.result = solve(
      data.miller_array, model=model, trials=p.phasing.trials,
      cycles=p.phasing.cycles, random_seed=p.phasing.random_seed, log=log,
      intensity_treatment=p.input.intensity_treatment,
      min_reflections=p.phasing.min_reflections, precision=p.phasing.precision,
      method=p.phasing.method, dual_space_starts=p.phasing.dual_space.starts,
      dual_space_cycles=p.phasing.dual_space.cycles,
      recycle=p.phasing.dual_space.recycle, time_limit=p.phasing.time_limit,
      stop_early=p.phasing.stop_early, network_check=p.phasing.network_check,
      network_frames=p.phasing.network_frames,
      dual_space_more_starts=p.phasing.dual_space.more_starts,
      refine_network=p.phasing.dual_space.refine_network,
      network_seeds=tuple(p.phasing.dual_space.network_seeds or ()),
      sign_combinations=p.phasing.dual_space.sign_combinations,
      omit_refinement=p.phasing.dual_space.omit_refinement,
      composition=choices[0] if choices else None,
      composition_alternatives=choices[1:], atom_search=p.phasing.atom_search.enabled,
      atom_restarts=p.phasing.atom_search.restarts,
      atom_retry=p.phasing.atom_search.retry,
      heavy_atoms=p.phasing.atom_search.heavy_atoms,
      peak_maps=p.phasing.atom_search.peak_maps,
      peak_rounds=p.phasing.atom_search.peak_rounds,
      first_map=p.phasing.atom_search.first_map,
      guess_composition=p.phasing.atom_search.guess_composition,
      elements=None if composition is None else composition.symbols)
    t2 = time.time()
    steps.append(("phasing", t2 - t_solve))
    phasing_steps = [(k, float(v)) for k, v in sorted(
      (getattr(self.result, "timings", None) or {}).items())
      if k != "total" and isinstance(v, (int, float))]
    prefix = self._prefix()
    mb = p.model_building
    self.result.model_building = starting_model.not_asked()
    verdict = getattr(self.result, "verdict", None)
    if mb.build_model and verdict in starting_model.MODEL_VERDICTS:
      print("", file=log)
      # The merged amplitudes and the phases in the data's own group and
      # setting; the .hkl gets the data as read (intensities stay intensities).
      facts = data.facts
      atom_model = getattr(self.result, "atom_model", None)
      z = mb.z or facts.z
      if not z and atom_model is not None:
        # A formula without Z: the Z of the atom model the phases came from.
        from phai_cctbx import atom_search
        z = atom_search.formula_units_of(atom_model, composition,
                                         self.result.f_obs.space_group())
      self.result.model_building = starting_model.build(
        self.result.f_obs, self.result.phases, data.miller_array,
        elements=composition, map_type=mb.map_type,
        wavelength=mb.wavelength if mb.wavelength is not None else facts.wavelength,
        title=os.path.basename(prefix), log=log, cell_esds=facts.cell_esds,
        z=z, atom_model=atom_model)
      steps.append(("model building", time.time() - t2))
    elif mb.build_model:
      self.result.model_building = starting_model.not_supported(verdict)
      print("", file=log)
      print("No starting model written: the verdict is %r, and atoms are "
            "placed only in a map of phases judged solved or probably solved."
            % verdict, file=log)
    print("", file=log)
    suffixes = outputs.output_suffixes(self.result)
    names = ["%s%s" % (prefix, s) for s in suffixes]
    print("Writing " + ", ".join(names), file=log)
    stale = [prefix + s for s in self._output_suffixes()
             if s not in suffixes and os.path.exists(prefix + s)]
    if stale and p.output.overwrite:
      print("Removing " + ", ".join(stale) + " (from an earlier run; not "
            "written by this one)", file=log)
    t3 = time.time()
    self.result.timings = self._timing_keys(steps, phasing_steps, t3 - started)
    self.files = outputs.write_all(
      self.result, prefix, overwrite=p.output.overwrite,
      log_text=log.copy.getvalue(), include_extended=p.output.include_extended,
      map_resolution_factor=p.output.map_resolution_factor,
      remove_stale=self._output_suffixes())
    steps.append(("writing", time.time() - t3))
    rows, total = wall_times(started, steps, time.time())
    lines = ["Timings (wall clock): " + ", ".join(
      "%s %.2f s" % r for r in rows if r[0] != "other" or r[1] >= 0.005)
      + "; total %.2f s" % total]
    if phasing_steps:
      lines.append("  phasing: " + ", ".join(
        "%s %.2f s" % r for r in phasing_steps))
    for line in lines:
      print(line, file=self.logger)
    self.result.timings = self._timing_keys(rows, phasing_steps, total)
    self._complete_outputs(prefix, lines)

  @staticmethod
  def _timing_keys(rows, phasing_steps, total):
    out = dict((name.replace(" ", "_").replace("-", "_"), v) for name, v in rows)
    out.update(("phasing/%s" % k, v) for k, v in phasing_steps)
    out["total"] = total
    return out

  def _complete_outputs(self, prefix, lines):
    """The run's wall times, known only after writing: added to PREFIX.log
    and PREFIX.json."""
    from phai_cctbx.outputs import write_json
    log_name, json_name = prefix + ".log", prefix + ".json"
    if log_name in self.files:
      with open(log_name, "a") as f:
        f.write("\n".join(lines) + "\n")
    if json_name in self.files:
      import json
      with open(json_name) as f:
        summary = json.load(f)
      summary["timings_s"] = dict(
        (k, round(v, 3)) for k, v in self.result.timings.items())
      tmp = "%s.%d.part.json" % (prefix, os.getpid())
      write_json(summary, tmp)
      os.replace(tmp, json_name)

  def get_results(self):
    result = getattr(self, "result", None)
    if result is None:
      return None
    summary = result.summary()
    summary["files"] = list(getattr(self, "files", []))
    return summary
