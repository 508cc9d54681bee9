"""phai.solve's model-building step: atoms from the phased map, SHELX files.

After phasing, :func:`build` places atoms in the map of the merged
amplitudes with the network's phases (:mod:`phai_cctbx.model_building`), in
the data's own space group and setting, and prepares the files a user
refines from (:mod:`phai_cctbx.shelx_output`):

* PREFIX.res and PREFIX.ins (the same text; ``shelxl PREFIX`` reads the
  .ins, Olex2 opens either),
* PREFIX.hkl: the reflections as read (unmerged), as HKLF 4 intensities
  (amplitudes squared),
* PREFIX_model.cif: the atoms as an ``_atom_site`` CIF.

A map without clear peaks gives no atoms and no model files, only a warning;
the phase outputs are written all the same.  Problems of the model step
never stop the run: they become warnings.
"""
from __future__ import absolute_import, division, print_function

from libtbx.utils import Sorry

from phai_cctbx import model_building, shelx_output

#: Files of the starting model, after the output prefix.
MODEL_SUFFIXES = (".res", ".ins", ".hkl", "_model.cif")


class ModelBuilding(object):
  """The starting model of a run and the files it gives.

  Attributes:
    model: the :class:`phai_cctbx.model_building.StartingModel`, or None
      when building failed.
    reflections: the miller array written as PREFIX.hkl.
    res_text: text of PREFIX.res/.ins (None when no files are written).
    skipped: why no model files are written (None when they are).
    warnings: the model's warnings and the step's own.
  """

  def __init__(self, model, reflections, res_text=None, skipped=None,
               warnings=(), cif_items=None):
    self.model = model
    self.reflections = reflections
    self.res_text = res_text
    self.skipped = skipped
    self.warnings = list(warnings)
    self.cif_items = dict(cif_items or {})

  @property
  def writes_files(self):
    return self.skipped is None and self.res_text is not None

  def suffixes(self):
    """Suffixes of the files this step writes (none without a model)."""
    return MODEL_SUFFIXES if self.writes_files else ()

  def writers(self):
    """(suffix, writer(file_name)) for each model file."""
    if not self.writes_files:
      return []

    def write_text(file_name):
      with open(file_name, "w") as f:
        f.write(self.res_text)

    return [
      (".res", write_text),
      (".ins", write_text),
      (".hkl", lambda fn: shelx_output.write_hkl(self.reflections, fn)),
      ("_model.cif", lambda fn: shelx_output.write_model_cif(
        self.model, fn, **self.cif_items)),
    ]

  def summary(self):
    """A JSON-ready dict: atoms, fragments, warnings, files written or not."""
    m = self.model
    out = {
      "built": m is not None,
      "files_written": self.writes_files,
      "skipped": self.skipped,
      "warnings": list(self.warnings),
      "n_atoms": 0,
      "n_fragments": 0,
    }
    if m is None:
      return out
    out["map_type"] = m.map_type
    out["source"] = "atom model" if m.from_atom_model else "map peaks"
    out["elements"] = str(m.composition) if m.composition is not None else None
    out["carbon_level"] = (round(float(m.carbon_level), 3)
                           if m.carbon_level is not None else None)
    out["n_atoms"] = len(m.atoms)
    out["n_fragments"] = len(m.fragments)
    if m.is_empty():
      return out
    by_label = dict((a.label, a) for a in m.atoms)
    out["fragments"] = [
      {"formula": _formula([by_label[l].element for l in f]), "atoms": list(f)}
      for f in m.fragments]
    out["atoms"] = [
      {"label": a.label, "element": a.element,
       "xyz": [round(float(x), 5) for x in a.site],
       "height": round(float(a.height), 2), "height_over_c": round(float(a.ratio), 2)}
      for a in m.atoms]
    out["unit_cell_content"] = dict(
      (e, round(float(n), 2)) for e, n in m.unit_cell_content().items())
    return out


def not_asked():
  """The step's record when the user asked for phases only."""
  return ModelBuilding(None, None, skipped="not asked (build_model=False)")


#: Verdicts whose maps are trusted with a starting model.
MODEL_VERDICTS = ("solved", "probably solved")


def not_supported(verdict):
  """The step's record when the phases are not good enough for a model."""
  return ModelBuilding(None, None, skipped=(
    "verdict %r: the map does not support a model of atoms (a model is "
    "written only when the verdict is %s)" % (
      verdict, " or ".join(repr(v) for v in MODEL_VERDICTS))))


def build(f_obs, phases_deg, reflections, elements=None, map_type="E",
          wavelength=None, title=None, log=None, cell_esds=None, z=None,
          atom_model=None):
  """Build the starting model and prepare its files.

  Args:
    f_obs: merged amplitudes, original space group and setting.
    phases_deg: their phases in degrees (the solution).
    reflections: the data as read (intensities or amplitudes) for PREFIX.hkl.
    elements: formula or element list (see model_building.parse_elements),
      or a model_building.Composition (e.g. the unit-cell content read from
      the input).
    map_type: "E" or "F".
    wavelength: for the CELL line (None: Mo K-alpha, said in the log).
    cell_esds, z: for the ZERR line, as the input gave them (None: zeros and
      one formula unit per asymmetric unit, said in the log).
    title: TITL of the .res (the space group is added).
    atom_model: an atom_search.AtomModel whose F_calc gave the phases: its
      atoms and elements make the model (model_building.model_from_atoms)
      instead of the map's peaks.
    log: file-like object; the model's listing goes there.

  Returns a :class:`ModelBuilding`; the model step never raises Sorry for
  the data (its problems are warnings and no model files), only for a bad
  ``elements`` value, which the program checks before any work.
  """
  composition = model_building.parse_elements(elements)
  try:
    if atom_model is not None:
      model = model_building.model_from_atoms(
        f_obs, phases_deg, atom_model.elements, atom_model.sites,
        composition=composition, log=log, map_type=map_type)
    else:
      model = model_building.build_starting_model(
        f_obs, phases_deg, elements=composition, log=log, map_type=map_type)
  except Sorry as e:
    reason = "model building failed: %s" % e
    _print(log, "  WARNING: %s" % reason)
    return ModelBuilding(None, reflections, skipped=reason, warnings=[reason])
  warnings = list(model.warnings)
  if model.is_empty():
    reason = "no atoms placed (no clear peaks in the map)"
    _print(log, "No model files written: %s; the phases are written." % reason)
    return ModelBuilding(model, reflections, skipped=reason, warnings=warnings)
  notes = []
  try:
    lines = shelx_output.res_lines(model, title=title, wavelength=wavelength,
                                   cell_esds=cell_esds, z=z, notes=notes)
  except Sorry as e:
    reason = "no SHELX file possible: %s" % e
    warnings.append(reason)
    _print(log, "  WARNING: %s" % reason)
    _print(log, "No model files written.")
    return ModelBuilding(model, reflections, skipped=reason, warnings=warnings)
  for note in notes:
    _print(log, "  " + note)
  kind = ("intensities" if reflections.is_xray_intensity_array()
          else "amplitudes, squared")
  _print(log, "Model files: %d atoms in %d fragment%s; .res/.ins for SHELXL, "
         ".hkl with the %d reflections as read (%s, HKLF 4)" % (
           len(model.atoms), len(model.fragments),
           "" if len(model.fragments) == 1 else "s", reflections.size(), kind))
  return ModelBuilding(model, reflections, res_text="\n".join(lines) + "\n",
                       warnings=warnings, cif_items=dict(
                         wavelength=wavelength, z=z, cell_esds=cell_esds))


def _formula(elements):
  """Hill-order formula of a list of element symbols (C, H, then A-Z)."""
  counts = {}
  for e in elements:
    counts[e] = counts.get(e, 0) + 1
  order = sorted(counts, key=lambda e: (e != "C", e != "H", e))
  return "".join(e + ("" if counts[e] == 1 else str(counts[e])) for e in order)


def _print(log, text=""):
  if log is not None:
    print(text, file=log)
