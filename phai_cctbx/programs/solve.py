"""phai.solve: phase measured small-molecule data with PhAI."""
from __future__ import absolute_import, division, print_function

import importlib.resources
import io
import os
import time

from libtbx.program_template import ProgramTemplate
from libtbx.utils import Sorry

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
PREFIX_model.cif (elements="C H N O" or a formula helps the element choice;
build_model=False for phases only).
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
    if p.phasing.random_seed is None or p.phasing.random_seed < 0:
      raise Sorry("phasing.random_seed must be zero or positive.")
    if p.phasing.min_reflections is None or p.phasing.min_reflections < 1:
      raise Sorry("phasing.min_reflections must be a positive integer.")
    rf = p.output.map_resolution_factor
    if rf is None or not 0.05 <= rf <= 0.5:
      raise Sorry("output.map_resolution_factor must be between 0.05 and 0.5.")
    if p.model.weights is not None and not os.path.isfile(p.model.weights):
      raise Sorry("Weights file not found: %s (give model.weights=PATH to an "
                  "existing file)." % p.model.weights)
    from phai_cctbx.model_building import parse_elements
    parse_elements(p.model_building.elements)
    wavelength = p.model_building.wavelength
    if wavelength is not None and not 0 < wavelength < 10:
      raise Sorry("model_building.wavelength must be in A, between 0 and 10 "
                  "(got %s)." % wavelength)
    from phai_cctbx.outputs import OutputFiles
    suffixes = self._output_suffixes()
    self._check_inputs_not_outputs(suffixes)
    OutputFiles(self._prefix(), p.output.overwrite).check(suffixes)

  def run(self):
    from phai_cctbx import data_input, outputs, starting_model
    from phai_cctbx.solve import solve
    p = self.params
    t0 = time.time()
    log = _Tee(self.logger)
    print("phai.solve: PhAI phasing", file=log)
    print(time.strftime("  started %Y-%m-%d %H:%M:%S"), file=log)
    print("", file=log)
    data = data_input.read_data(
      p.input.reflection_file, labels=p.input.labels,
      hklf=None if p.input.hklf == "auto" else int(p.input.hklf),
      symmetry_file=p.input.symmetry_file, unit_cell=p.input.unit_cell,
      space_group=p.input.space_group)
    for line in data.describe():
      print(line, file=log)
    print("", file=log)
    # The network first: a bad weights file fails before any work.
    from phai_cctbx.weights import load_model
    t1 = time.time()
    model = load_model(p.model.weights)
    t_model = time.time() - t1
    self.result = solve(
      data.miller_array, model=model, trials=p.phasing.trials,
      cycles=p.phasing.cycles, random_seed=p.phasing.random_seed, log=log,
      intensity_treatment=p.input.intensity_treatment,
      min_reflections=p.phasing.min_reflections, precision=p.phasing.precision)
    self.result.timings["model"] = t_model
    self.result.timings["reading"] = t1 - t0
    prefix = self._prefix()
    mb = p.model_building
    self.result.model_building = starting_model.not_asked()
    if mb.build_model:
      print("", file=log)
      t2 = time.time()
      # The merged amplitudes and the phases in the data's own group and
      # setting; the .hkl gets the data as read (intensities stay intensities).
      self.result.model_building = starting_model.build(
        self.result.f_obs, self.result.phases, data.miller_array,
        elements=mb.elements, map_type=mb.map_type, wavelength=mb.wavelength,
        title=os.path.basename(prefix), log=log)
      self.result.timings["model_building"] = time.time() - t2
    print("", file=log)
    suffixes = outputs.output_suffixes(self.result)
    names = ["%s%s" % (prefix, s) for s in suffixes]
    print("Timings: " + ", ".join("%s %.1f s" % (k, v) for k, v in sorted(
      self.result.timings.items())), file=log)
    print("Writing " + ", ".join(names), file=log)
    stale = [prefix + s for s in self._output_suffixes()
             if s not in suffixes and os.path.exists(prefix + s)]
    if stale and p.output.overwrite:
      print("Removing " + ", ".join(stale) + " (from an earlier run; not "
            "written by this one)", file=log)
    self.files = outputs.write_all(
      self.result, prefix, overwrite=p.output.overwrite,
      log_text=log.copy.getvalue(), include_extended=p.output.include_extended,
      map_resolution_factor=p.output.map_resolution_factor,
      remove_stale=self._output_suffixes())

  def get_results(self):
    result = getattr(self, "result", None)
    if result is None:
      return None
    summary = result.summary()
    summary["files"] = list(getattr(self, "files", []))
    return summary
