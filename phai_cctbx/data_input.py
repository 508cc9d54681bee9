"""Reading reflection data and crystal symmetry for phasing.

Reflections come from:

* SHELX .hkl files (HKLF 4 intensities, HKLF 3 amplitudes), read with
  :mod:`iotbx.shelx.hklf` after a line-by-line check that reports the first
  bad line;
* CIF files with ``_refln_*`` loops (COD .hkl/.cif, SHELX .fcf), read with
  :mod:`iotbx.cif`, and CIFs with an embedded ``_shelx_hkl_file`` (with the
  ``_shelx_res_file`` and the block's cell and symmetry alongside);
* MTZ files, read with :mod:`iotbx.reflection_file_reader`, the column
  chosen with ``labels``.

The crystal symmetry is put together field by field from, in this order, the
``unit_cell``/``space_group`` parameters, a SHELX .ins/.res (or CIF) given
alongside, and the reflection file itself.  What else the files say about
the crystal is kept for the starting model, field by field in the same order
(see :func:`read_input_facts`): the composition (SFAC/UNIT of a .ins/.res,
``_chemical_formula_sum`` times ``_cell_formula_units_Z`` or the
``_atom_type`` loop of a CIF, an ``elements=``/``formula`` line of an MTZ
history), the wavelength, Z and the cell's esds.  Every problem with the
input is reported as a :class:`libtbx.utils.Sorry` naming what to do.
"""
from __future__ import absolute_import, division, print_function

import io
import math
import os
import re

from cctbx import crystal, miller, sgtbx, uctbx
from cctbx.array_family import flex
from libtbx.utils import Sorry

from phai_cctbx import symmetry as symmetry_module

#: The reflection-file formats recognised.
FORMATS = ("shelx", "cif", "mtz")


class ReflectionData(object):
  """Reflections as read, with the crystal symmetry put together.

  Attributes:
    miller_array: real miller array (intensities or amplitudes, sigmas where
      the file has them) with the combined crystal symmetry, unmerged as read.
    file_name, file_format: where it came from ("shelx", "cif", "mtz").
    labels: label string of the chosen data.
    symmetry_sources: dict field ("unit cell", "space group") -> description
      of where it came from.
    notes: lines for the log (reflections skipped and why).
  """

  def __init__(self, miller_array, file_name, file_format, labels,
               symmetry_sources, notes, facts=None):
    self.miller_array = miller_array
    self.file_name = file_name
    self.file_format = file_format
    self.labels = labels
    self.symmetry_sources = symmetry_sources
    self.notes = notes
    self.facts = facts if facts is not None else InputFacts()

  @property
  def composition(self):
    """The model_building.Composition the files give (with its source), or None."""
    return self.facts.composition

  @property
  def wavelength(self):
    return self.facts.wavelength

  @property
  def crystal_symmetry(self):
    return self.miller_array.crystal_symmetry()

  @property
  def is_intensities(self):
    return self.miller_array.is_xray_intensity_array()

  def describe(self):
    ma = self.miller_array
    kind = "intensities" if self.is_intensities else "amplitudes"
    lines = ["Read %d %s (%s) from %s (%s format)" % (
      ma.size(), kind, self.labels, self.file_name, self.file_format)]
    for field in ("unit cell", "space group"):
      lines.append("  %s from %s" % (field, self.symmetry_sources.get(field, "?")))
    lines.extend("  " + n for n in self.notes)
    lines.extend("  " + n for n in self.facts.describe())
    return lines


class InputFacts(object):
  """What the input files say about the crystal besides reflections and symmetry.

  Attributes (None when no file says it): ``composition`` (a
  :class:`phai_cctbx.model_building.Composition`, unit-cell content when
  ``per_cell``), ``wavelength`` (A), ``z`` (formula units per cell),
  ``cell_esds`` (six esds of a b c alpha beta gamma); ``sources``: field ->
  where it came from; ``notes``: lines for the log (parts not understood).
  """

  FIELDS = ("composition", "wavelength", "z", "cell_esds")

  def __init__(self, composition=None, wavelength=None, z=None, cell_esds=None,
               sources=None, notes=()):
    self.composition = composition
    self.wavelength = wavelength
    self.z = z
    self.cell_esds = cell_esds
    self.sources = dict(sources or {})
    self.notes = list(notes)

  def describe(self):
    lines = list(self.notes)
    if self.composition is not None:
      lines.append("composition %s%s from %s" % (
        self.composition, " (unit cell)" if self.composition.per_cell else "",
        self.sources["composition"]))
    if self.wavelength is not None:
      lines.append("wavelength %.5g A from %s" % (
        self.wavelength, self.sources["wavelength"]))
    return lines


def combine_facts(sources):
  """InputFacts from (description, InputFacts) pairs, the first wins per field."""
  out = InputFacts()
  for description, facts in sources:
    if facts is None:
      continue
    out.notes.extend(facts.notes)
    for field in InputFacts.FIELDS:
      if getattr(out, field) is None and getattr(facts, field) is not None:
        setattr(out, field, getattr(facts, field))
        out.sources[field] = facts.sources.get(field, description)
  if out.composition is not None:
    out.composition = out.composition.with_source(out.sources["composition"])
  return out


# --- composition, wavelength, Z and esds ----------------------------------------

def _element_symbol(label):
  """The element of a SHELX SFAC or CIF _atom_type label ("NA", "Na1+"), or None."""
  from phai_cctbx.model_building import _standard_symbol
  m = re.match(r"([A-Za-z]{1,2})", label.strip())
  if m is None:
    return None
  word = m.group(1)
  for candidate in (word[:1].upper() + word[1:].lower(), word[:1].upper()):
    if _standard_symbol(candidate) is not None:
      return _standard_symbol(candidate)
  return None


def _composition(symbols, counts, source, per_cell):
  """A Composition from labels and counts (None where unusable), or (None, note)."""
  from phai_cctbx.model_building import Composition
  elements = []
  for label in symbols:
    e = _element_symbol(label)
    if e is None:
      return None, "%s: %r is not an element symbol; composition not used" % (
        source, label)
    elements.append(e)
  use_counts = counts is not None and len(counts) == len(elements) and \
    all(c is not None and math.isfinite(c) and c >= 0 for c in counts) and \
    any(c > 0 for c in counts)
  merged = {}
  order = []
  for i, e in enumerate(elements):
    c = counts[i] if use_counts else 1.0
    if use_counts and c == 0:
      continue
    if e not in merged:
      order.append(e)
      merged[e] = 0.0
    merged[e] += c
  if not [e for e in order if e not in ("H", "D")]:
    return None, "%s: no element heavier than hydrogen; composition not used" % source
  return Composition(order, merged if use_counts else None,
                     per_cell=per_cell and use_counts, source=source), None


def _number(text):
  """A float from a SHELX or CIF number ("11.6812(6)"), or None."""
  m = re.match(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\((\d+)\))?\s*$",
               str(text))
  if m is None:
    return None
  return float(m.group(1))


def _cif_esd(text):
  """The esd of a CIF number ("11.6812(6)" -> 0.0006; "90" -> 0.0), or None."""
  m = re.match(r"^\s*[-+]?(\d*)(?:\.(\d*))?(?:[eE][-+]?\d+)?(?:\((\d+)\))?\s*$",
               str(text))
  if m is None or not (m.group(1) or m.group(2)):
    return None
  if m.group(3) is None:
    return 0.0
  decimals = len(m.group(2) or "")
  return int(m.group(3)) * 10.0 ** (-decimals)


def _shelx_instructions(text):
  """(KEYWORD, [arguments]) of a SHELX .ins/.res, '=' continuations joined."""
  out = []
  pending = None
  for raw in text.splitlines():
    line = raw.split("!")[0].rstrip()
    continued = pending is not None
    if continued:
      line = pending + " " + line.strip()
      pending = None
    if line.endswith("="):
      pending = line[:-1]
      continue
    words = line.split()
    if not words or (raw[:1].isspace() and not continued):
      continue
    out.append((words[0].upper(), words[1:]))
  if pending is not None and pending.split():
    words = pending.split()
    out.append((words[0].upper(), words[1:]))
  return out


def facts_from_ins_text(text, source):
  """InputFacts from the CELL, ZERR, SFAC and UNIT lines of a SHELX .ins/.res."""
  facts = InputFacts()
  sfac = []
  unit = None
  for key, args in _shelx_instructions(text):
    if key == "CELL" and facts.wavelength is None and args:
      w = _number(args[0])
      if w is not None and 0 < w < 10:
        facts.wavelength = w
        facts.sources["wavelength"] = "%s (CELL)" % source
    elif key == "ZERR" and facts.z is None and len(args) >= 7:
      values = [_number(a) for a in args[:7]]
      if None not in values:
        if values[0] > 0:
          facts.z = values[0]
          facts.sources["z"] = "%s (ZERR)" % source
        facts.cell_esds = tuple(values[1:7])
        facts.sources["cell_esds"] = "%s (ZERR)" % source
    elif key == "SFAC" and args:
      if len(args) > 1 and _number(args[1]) is not None:
        sfac.append(args[0])      # long form: one element and its coefficients
      else:
        sfac.extend(args)
    elif key == "UNIT" and unit is None:
      unit = [_number(a) for a in args]
    elif key in ("HKLF", "END"):
      break
  if sfac:
    comp, note = _composition(sfac, unit, "%s (SFAC/UNIT)" % source, per_cell=True)
    if note:
      facts.notes.append(note)
    elif comp is not None:
      if comp.counts is None:
        comp.source = "%s (SFAC)" % source
      facts.composition = comp
      facts.sources["composition"] = comp.source
  return facts


def _cif_value(block, key):
  """The first value of a CIF item (looped or not) as a string, or None."""
  value = block.get(key)
  if value is None:
    return None
  if not isinstance(value, str):
    value = list(value)
    value = value[0] if value else None
  if value is None or value.strip() in ("", "?", "."):
    return None
  return value.strip()


def facts_from_cif_block(block, source):
  """InputFacts from a CIF block: formula (times Z), _atom_type, wavelength, esds."""
  from phai_cctbx.model_building import parse_elements
  facts = InputFacts()
  z = _cif_value(block, "_cell_formula_units_Z")
  z = _number(z) if z is not None else None
  if z is not None and z > 0:
    facts.z = z
    facts.sources["z"] = "%s (_cell_formula_units_Z)" % source
  formula = _cif_value(block, "_chemical_formula_sum")
  if formula is not None:
    try:
      comp = parse_elements(re.sub(r"[+-]\d*|\d*[+-]", "", formula))
    except Sorry:
      facts.notes.append("%s: _chemical_formula_sum %r not understood; not used"
                         % (source, formula))
    else:
      where = "%s (_chemical_formula_sum %s" % (source, formula)
      if comp.counts is not None and facts.z is not None:
        comp = comp.times(facts.z)
        where += ", Z = %g)" % facts.z
      else:
        where += ")"
      facts.composition = comp.with_source(where)
      facts.sources["composition"] = where
  if facts.composition is None and block.get("_atom_type_symbol") is not None:
    labels = block.get("_atom_type_symbol")
    labels = [labels] if isinstance(labels, str) else list(labels)
    numbers = block.get("_atom_type_number_in_cell")
    counts = None
    if numbers is not None:
      numbers = [numbers] if isinstance(numbers, str) else list(numbers)
      counts = [_number(n) for n in numbers]
    comp, note = _composition(labels, counts, "%s (_atom_type)" % source,
                              per_cell=True)
    if note:
      facts.notes.append(note)
    elif comp is not None:
      facts.composition = comp
      facts.sources["composition"] = comp.source
  w = _cif_value(block, "_diffrn_radiation_wavelength")
  w = _number(w) if w is not None else None
  if w is not None and 0 < w < 10:
    facts.wavelength = w
    facts.sources["wavelength"] = "%s (_diffrn_radiation_wavelength)" % source
  esds = []
  for key in ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma"):
    v = _cif_value(block, key)
    esds.append(_cif_esd(v) if v is not None else None)
  if None not in esds and any(e > 0 for e in esds):
    facts.cell_esds = tuple(esds)
    facts.sources["cell_esds"] = "%s (_cell_length/_cell_angle)" % source
  return facts


def _cif_facts(reader, file_name):
  """InputFacts of a CIF: its embedded _shelx_res_file first, then its blocks."""
  sources = []
  for name, block in reader.model().items():
    if "_shelx_res_file" in block:
      sources.append((file_name, facts_from_ins_text(
        str(block["_shelx_res_file"]), file_name + " (_shelx_res_file)")))
  for name, block in reader.model().items():
    sources.append((file_name, facts_from_cif_block(block, file_name)))
  return combine_facts(sources)


_MTZ_COMPOSITION = re.compile(r"(?:elements|formula|composition)\s*[=:]\s*"
                              r"\"?([A-Za-z][A-Za-z0-9. ,]*)", re.I)


def facts_from_mtz(file_name):
  """InputFacts of an MTZ: a composition in its history, its wavelength."""
  from phai_cctbx.model_building import parse_elements
  from iotbx import mtz
  facts = InputFacts()
  try:
    m = mtz.object(file_name)
  except Exception:
    return facts
  for line in m.history():
    found = _MTZ_COMPOSITION.search(line)
    if found is None:
      continue
    try:
      comp = parse_elements(found.group(1).strip().rstrip(",."))
    except Sorry:
      continue
    where = "%s (history: %s)" % (file_name, line.strip())
    facts.composition = comp.with_source(where)
    facts.sources["composition"] = where
    break
  for crystal_ in m.crystals():
    for dataset in crystal_.datasets():
      w = dataset.wavelength()
      if facts.wavelength is None and 0 < w < 10:
        facts.wavelength = w
        facts.sources["wavelength"] = "%s (dataset %s)" % (file_name, dataset.name())
  return facts


# --- files --------------------------------------------------------------------

def _check_file(file_name, what="Reflection file"):
  if file_name is None:
    raise Sorry("No reflection file given: give the data file as the first "
                "argument (SHELX .hkl, CIF, .fcf or MTZ).")
  if not os.path.isfile(file_name):
    raise Sorry("%s not found: %s" % (what, file_name))
  if os.path.getsize(file_name) == 0:
    raise Sorry("%s %s is empty: give a file with reflections." % (what, file_name))
  try:
    with open(file_name, "rb") as f:
      f.read(1)
  except (IOError, OSError) as e:
    raise Sorry("Cannot read %s %s (%s)." % (what.lower(), file_name, e)) from None


def detect_format(file_name):
  """'mtz', 'cif' or 'shelx' from the file's first bytes (then its name)."""
  with open(file_name, "rb") as f:
    head = f.read(65536)
  if head[:4] == b"MTZ ":
    return "mtz"
  text = head.decode("latin-1")
  if re.search(r"^\s*data_\S*", text, re.M) and (
      "_refln" in text or "_shelx_hkl_file" in text or "loop_" in text):
    return "cif"
  ext = os.path.splitext(file_name)[1].lower()
  if ext == ".mtz":
    return "mtz"
  if ext in (".cif", ".fcf"):
    return "cif"
  return "shelx"


# --- SHELX hkl ------------------------------------------------------------------

_FIELDS = ((0, 4, "h"), (4, 8, "k"), (8, 12, "l"), (12, 20, "F or I"),
           (20, 28, "sigma"))


def check_hklf_text(text, source):
  """Check SHELX HKLF lines (3I4, 2F8) up to the 0 0 0 line; Sorry on the first bad one.

  Returns the number of reflection lines.
  """
  n = 0
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    line = line.rstrip("\r\n").expandtabs()
    fields = []
    for start, end, name in _FIELDS:
      field = line[start:end].strip()
      if name == "sigma" and field == "":
        fields.append(None)
        continue
      if field == "":
        raise Sorry("%s line %d is truncated (no %s): %r; give complete "
                    "SHELX HKLF lines (h k l in 3I4, F or I and sigma in 2F8)."
                    % (source, number, name, line.strip()))
      try:
        value = int(field) if end <= 12 else float(field)
      except ValueError:
        raise Sorry("%s line %d has a non-numeric %s field %r: give SHELX HKLF "
                    "lines (h k l in 3I4, F or I and sigma in 2F8)."
                    % (source, number, name, field)) from None
      if end > 12 and not math.isfinite(value):
        raise Sorry("%s line %d has a NaN or infinite %s (%r): remove or "
                    "correct that reflection." % (source, number, name, field))
      fields.append(value)
    if fields[0] == fields[1] == fields[2] == 0:
      break
    n += 1
  if n == 0:
    raise Sorry("%s holds no reflections: give a SHELX HKLF file with at least "
                "one h k l line before the 0 0 0 line." % source)
  return n


def read_hklf_text(text, source, hklf_code, crystal_symmetry=None):
  """Miller array (unmerged) from SHELX HKLF text; negative sigmas dropped."""
  from iotbx.shelx import hklf
  check_hklf_text(text, source)
  # The reader stops at an empty line: drop blank lines (CIF text fields start
  # with one).
  text = "\n".join(l for l in text.splitlines() if l.strip()) + "\n"
  try:
    reader = hklf.reader(file_object=io.StringIO(text))
  except RuntimeError as e:
    raise Sorry("%s is not a readable SHELX HKLF file (%s)." % (source, e)) from None
  ma = reader.as_miller_arrays(
    crystal_symmetry=crystal_symmetry or crystal.symmetry(),
    merge_equivalents=False)[0]
  notes = []
  if ma.sigmas() is not None:
    flagged = ma.sigmas() < 0
    if flagged.count(True):
      notes.append("%d more reflections with negative sigma (flagged as "
                   "rejected) skipped" % flagged.count(True))
      ma = ma.select(~flagged)
    if ma.sigmas().all_eq(0):
      ma = ma.customized_copy(sigmas=None)
  if hklf_code == 3:
    ma = ma.set_observation_type_xray_amplitude()
    labels = "F,SIGF (HKLF 3)"
  else:
    ma = ma.set_observation_type_xray_intensity()
    labels = "I,SIGI (HKLF 4)"
  ma.set_info(miller.array_info(source=source, source_type="shelx_hklf",
                                labels=labels.split(" ")[0].split(",")))
  return ma, labels, notes


def hklf_code_from_ins_text(text):
  """The HKLF code (3 or 4) of a SHELX .ins/.res text, or None."""
  m = re.search(r"^\s*HKLF\s+(-?\d+)([^\n]*)", text, re.M | re.I)
  if m is None:
    return None
  code = abs(int(m.group(1)))
  rest = m.group(2).split("!")[0].split()
  if len(rest) >= 10:
    try:
      matrix = [float(x) for x in rest[1:10]]
    except ValueError:
      matrix = None
    if matrix is not None and matrix != [1, 0, 0, 0, 1, 0, 0, 0, 1]:
      raise Sorry("The HKLF instruction carries a transformation matrix, which "
                  "is not applied here: transform the reflection indices first.")
  if code not in (3, 4):
    raise Sorry("HKLF %d data are not supported: give HKLF 4 intensities or "
                "HKLF 3 amplitudes." % code)
  return code


def symmetry_from_ins_text(text, source):
  """Crystal symmetry from the CELL, LATT and SYMM lines of a SHELX .ins/.res."""
  from iotbx.shelx import crystal_symmetry_from_ins
  try:
    cs = crystal_symmetry_from_ins.extract_from(file=io.StringIO(text))
  except Exception as e:  # the SHELX parser raises several kinds
    raise Sorry("Cannot read cell and symmetry from %s (%s): check its CELL, "
                "LATT and SYMM lines." % (source, str(e).splitlines()[0] if str(e) else type(e).__name__)) from None
  return cs


# --- symmetry files ----------------------------------------------------------------

def read_symmetry_file(file_name):
  """(crystal_symmetry, hklf_code or None) from a SHELX .ins/.res or a CIF."""
  _check_file(file_name, what="Symmetry file")
  with open(file_name, "r", errors="replace") as f:
    text = f.read()
  fmt = detect_format(file_name)
  if fmt == "cif":
    block_cs, res_text = _cif_block_symmetry(_read_cif(file_name))
    code = hklf_code_from_ins_text(res_text) if res_text else None
    if block_cs is None and res_text:
      block_cs = symmetry_from_ins_text(res_text, file_name + " (_shelx_res_file)")
    return block_cs, code
  if fmt == "mtz":
    from iotbx.mtz import crystal_symmetry_from_mtz
    return crystal_symmetry_from_mtz.extract_from(file_name), None
  return symmetry_from_ins_text(text, file_name), hklf_code_from_ins_text(text)


def read_symmetry_file_facts(file_name):
  """InputFacts of a SHELX .ins/.res, CIF or MTZ given for the symmetry."""
  fmt = detect_format(file_name)
  if fmt == "cif":
    return _cif_facts(_read_cif(file_name), file_name)
  if fmt == "mtz":
    return facts_from_mtz(file_name)
  with open(file_name, "r", errors="replace") as f:
    return facts_from_ins_text(f.read(), file_name)


# --- CIF -------------------------------------------------------------------------

def _read_cif(file_name):
  import iotbx.cif
  try:
    reader = iotbx.cif.reader(file_path=file_name, strict=False)
  except Exception as e:  # CifParserError and friends
    raise Sorry("Cannot parse CIF %s (%s)." % (file_name, str(e).splitlines()[0])) from None
  if reader.model() is None or len(reader.model().keys()) == 0:
    raise Sorry("CIF %s has no data block." % file_name)
  return reader


def _cif_block_symmetry(reader):
  """(crystal symmetry of the first block that has one, text of _shelx_res_file)."""
  from iotbx.cif import builders
  cs = None
  res_text = None
  for name, block in reader.model().items():
    if res_text is None and "_shelx_res_file" in block:
      res_text = str(block["_shelx_res_file"])
    if cs is None:
      try:
        b = builders.crystal_symmetry_builder(block, strict=False)
        cs = b.crystal_symmetry
      except Exception:
        cs = None
  if cs is not None and cs.unit_cell() is None and cs.space_group_info() is None:
    cs = None
  return cs, res_text


def _observation_type_from_labels(ma):
  """A real array whose CIF labels say what it is but that cctbx left without
  an observation type (e.g. _refln_F_meas of a SHELX LIST 3 .fcf)."""
  if not ma.is_real_array() or ma.observation_type() is not None or ma.info() is None:
    return ma
  labels = [l.lower() for l in ma.info().labels]
  if any(l.endswith(("_f_squared_meas", "_intensity_meas")) for l in labels):
    return ma.customized_copy().set_info(ma.info()).set_observation_type_xray_intensity()
  if any(l.endswith("_f_meas") for l in labels):
    return ma.customized_copy().set_info(ma.info()).set_observation_type_xray_amplitude()
  return ma


def _refln_score(ma):
  """Preference among the arrays of a CIF: measured intensities with sigmas first."""
  labels = ",".join(ma.info().labels if ma.info() else [])
  if not ma.is_real_array() or "calc" in labels or "status" in labels:
    return 0
  if ma.data().size() == 0 or ma.data().all_eq(0):
    return 0
  score = 1
  if ma.is_xray_intensity_array():
    score += 4
  elif ma.is_xray_amplitude_array():
    score += 2
  else:
    return 0
  if ma.sigmas() is not None:
    score += 1
  return score


def _label_string(ma):
  labels = ma.info().labels if ma.info() is not None else []
  return ",".join(l for l in labels if l.startswith("_refln") or "data_" not in l) \
    if labels else "?"


def _choose_array(arrays, labels, file_name, score=_refln_score):
  """The array named by ``labels`` or the best-scoring one."""
  if labels:
    wanted = [l.strip() for l in labels.replace(" ", ",").split(",") if l.strip()]
    for ma in arrays:
      have = ma.info().labels if ma.info() is not None else []
      if ma.info() is not None and (ma.info().label_string() == labels
                                    or all(w in have for w in wanted)):
        return ma
    available = "; ".join(a.info().label_string() for a in arrays if a.info())
    raise Sorry("No data with labels %r in %s: give labels= one of: %s"
                % (labels, file_name, available or "(none)"))
  scored = sorted(((score(ma), i) for i, ma in enumerate(arrays)), reverse=True)
  if not scored or scored[0][0] == 0:
    raise Sorry("No measured intensities or amplitudes in %s: give a file with "
                "F^2 or F data (or choose them with labels=)." % file_name)
  return arrays[scored[0][1]]


def _read_cif_reflections(file_name, labels, hklf_code):
  """(miller array, labels, notes, block symmetry, res symmetry, hklf code)."""
  reader = _read_cif(file_name)
  block_cs, res_text = _cif_block_symmetry(reader)
  res_cs = None
  if res_text:
    res_cs = symmetry_from_ins_text(res_text, file_name + " (_shelx_res_file)")
    if hklf_code is None:
      hklf_code = hklf_code_from_ins_text(res_text)
  for name, block in reader.model().items():
    if "_shelx_hkl_file" in block:
      text = str(block["_shelx_hkl_file"])
      ma, lab, notes = read_hklf_text(
        text, "%s (_shelx_hkl_file)" % file_name, hklf_code or 4)
      return ma, lab, notes, block_cs, res_cs, hklf_code
  try:
    arrays = reader.as_miller_arrays()
  except Exception as e:
    raise Sorry("Cannot read the reflections of CIF %s (%s)."
                % (file_name, str(e).splitlines()[0] if str(e) else type(e).__name__)) from None
  if not arrays:
    raise Sorry("CIF %s holds no reflections (_refln loop or _shelx_hkl_file): "
                "give a reflection CIF or .fcf." % file_name)
  arrays = [_observation_type_from_labels(ma) for ma in arrays]
  ma = _choose_array(arrays, labels, file_name)
  notes = []
  if ma.sigmas() is not None and (ma.sigmas() < 0).count(True):
    flagged = ma.sigmas() < 0
    notes.append("%d more reflections with negative sigma skipped" % flagged.count(True))
    ma = ma.select(~flagged)
  return ma, _label_string(ma), notes, block_cs, res_cs, hklf_code


# --- MTZ -------------------------------------------------------------------------

def _mtz_score(ma):
  if not ma.is_real_array():
    return 0
  labels = ma.info().label_string()
  if "FREE" in labels.upper() or "PHI" in labels.upper() or ma.data().all_eq(0):
    return 0
  if ma.is_xray_intensity_array():
    score = 5
  elif ma.is_xray_amplitude_array():
    score = 3
  else:
    return 0
  if not ma.anomalous_flag():
    score += 2
  if ma.sigmas() is not None:
    score += 1
  return score


def _read_mtz(file_name, labels):
  from iotbx import reflection_file_reader
  try:
    rf = reflection_file_reader.any_reflection_file(file_name)
    arrays = rf.as_miller_arrays()
  except Exception as e:
    raise Sorry("Cannot read MTZ file %s (%s)." % (
      file_name, str(e).splitlines()[0] if str(e) else type(e).__name__)) from None
  if not arrays:
    raise Sorry("MTZ file %s holds no reflection data." % file_name)
  ma = _choose_array(arrays, labels, file_name, score=_mtz_score)
  if not (ma.is_xray_intensity_array() or ma.is_xray_amplitude_array()):
    raise Sorry("MTZ column %s of %s is neither intensities nor amplitudes: "
                "give labels= of an I or F column." % (ma.info().label_string(), file_name))
  return ma, ma.info().label_string()


# --- symmetry ---------------------------------------------------------------------

def parse_unit_cell(value):
  """A uctbx.unit_cell from a PHIL value (unit_cell object, string or tuple)."""
  if value is None:
    return None
  if isinstance(value, uctbx.ext.unit_cell):
    return value
  given = value
  try:
    if isinstance(value, str):
      value = [float(x) for x in value.replace(",", " ").split()]
    value = [float(x) for x in value]
    if len(value) != 6 or not all(math.isfinite(x) and x > 0 for x in value):
      raise ValueError(value)
    return uctbx.unit_cell(value)
  except Exception:
    raise Sorry("Cannot understand unit_cell=%r: give six numbers "
                "\"a b c alpha beta gamma\"." % (given,)) from None


def parse_space_group(value):
  """A sgtbx.space_group_info from a PHIL value (object or symbol)."""
  if value is None:
    return None
  if isinstance(value, sgtbx.space_group_info):
    return value
  try:
    return sgtbx.space_group_info(str(value))
  except Exception:
    raise Sorry("Cannot understand space_group=%r: give a symbol such as "
                "\"P 1 21/c 1\" or a number." % (value,)) from None


def combine_symmetry(sources):
  """Crystal symmetry from (description, crystal_symmetry) pairs, first wins per field.

  Returns (crystal_symmetry, {field: description}); Sorry naming the missing
  parameter when no source has a cell or a space group.
  """
  uc = sgi = None
  where = {}
  for description, cs in sources:
    if cs is None:
      continue
    if uc is None and cs.unit_cell() is not None:
      uc = cs.unit_cell()
      where["unit cell"] = description
    if sgi is None and cs.space_group_info() is not None:
      sgi = cs.space_group_info()
      where["space group"] = description
  if uc is None and sgi is None:
    raise Sorry("No unit cell or space group: give unit_cell=\"a b c alpha beta "
                "gamma\" and space_group=\"P 1 21/c 1\" (or a SHELX .ins/.res file).")
  if uc is None:
    raise Sorry("No unit cell: give unit_cell=\"a b c alpha beta gamma\" "
                "(or a SHELX .ins/.res file with a CELL line).")
  if sgi is None:
    raise Sorry("No space group: give space_group=\"P 1 21/c 1\" (or a SHELX "
                ".ins/.res file with LATT and SYMM lines).")
  cs = crystal.symmetry(unit_cell=uc, space_group_info=sgi,
                        assert_is_compatible_unit_cell=False,
                        force_compatible_unit_cell=False)
  symmetry_module.check_symmetry(cs)
  return cs, where


# --- everything together ---------------------------------------------------------

def read_data(file_name, labels=None, hklf=None, symmetry_file=None,
              unit_cell=None, space_group=None):
  """Read reflections and put their crystal symmetry together.

  Args:
    file_name: SHELX .hkl, CIF (``_refln`` loop or embedded
      ``_shelx_hkl_file``), .fcf or MTZ.
    labels: the data to use in a CIF or MTZ with several (e.g. "IMEAN,SIGIMEAN").
    hklf: 3 or 4 for SHELX data (None: from the .ins/.res HKLF line, else 4).
    symmetry_file: SHELX .ins/.res or CIF with the cell and space group.
    unit_cell, space_group: override those of the files.

  Returns a :class:`ReflectionData`.
  """
  _check_file(file_name)
  sources = [("the unit_cell parameter", crystal.symmetry(
                unit_cell=parse_unit_cell(unit_cell))) if unit_cell is not None else (None, None),
             ("the space_group parameter", crystal.symmetry(
                space_group_info=parse_space_group(space_group))) if space_group is not None else (None, None)]
  hklf_code = int(hklf) if hklf not in (None, "auto", "Auto") else None
  if hklf_code not in (None, 3, 4):
    raise Sorry("hklf=%s is not supported: give hklf=4 (intensities) or hklf=3 (amplitudes)." % hklf)
  fact_sources = []
  if symmetry_file:
    cs_file, code = read_symmetry_file(symmetry_file)
    sources.append((symmetry_file, cs_file))
    fact_sources.append((symmetry_file, read_symmetry_file_facts(symmetry_file)))
    if hklf_code is None:
      hklf_code = code
  fmt = detect_format(file_name)
  if fmt == "shelx":
    with open(file_name, "r", errors="replace") as f:
      text = f.read()
    ma, lab, notes = read_hklf_text(text, file_name, hklf_code or 4)
  elif fmt == "cif":
    ma, lab, notes, block_cs, res_cs, hklf_code = _read_cif_reflections(
      file_name, labels, hklf_code)
    sources.append((file_name, block_cs))
    sources.append((file_name + " (_shelx_res_file)", res_cs))
    if ma.crystal_symmetry() is not None:
      sources.append((file_name, ma.crystal_symmetry()))
    fact_sources.append((file_name, _cif_facts(_read_cif(file_name), file_name)))
  else:
    ma, lab = _read_mtz(file_name, labels)
    notes = []
    sources.append((file_name, ma.crystal_symmetry()))
    fact_sources.append((file_name, facts_from_mtz(file_name)))
  cs, where = combine_symmetry([s for s in sources if s[0] is not None])
  ma = ma.customized_copy(crystal_symmetry=cs)
  if ma.anomalous_flag() is None:
    ma = ma.customized_copy(anomalous_flag=False)
  check_values(ma, file_name)
  return ReflectionData(ma, file_name, fmt, lab, where, notes,
                        facts=combine_facts(fact_sources))


def check_values(miller_array, source):
  """Sorry for NaN or infinite values, no data, or only zero/negative data."""
  ma = miller_array
  if ma.size() == 0:
    raise Sorry("%s holds no reflections." % source)
  data = ma.data().as_numpy_array() if hasattr(ma.data(), "as_numpy_array") else list(ma.data())
  import numpy as np
  data = np.asarray(data, dtype=float)
  if not np.all(np.isfinite(data)):
    raise Sorry("%s has NaN or infinite values (%d reflections): remove or "
                "correct them." % (source, int((~np.isfinite(data)).sum())))
  if ma.sigmas() is not None:
    sig = np.asarray(ma.sigmas().as_numpy_array(), dtype=float)
    if not np.all(np.isfinite(sig)):
      raise Sorry("%s has NaN or infinite sigmas (%d reflections): remove or "
                  "correct them." % (source, int((~np.isfinite(sig)).sum())))
  if not np.any(data > 0):
    kind = "intensities" if ma.is_xray_intensity_array() else "amplitudes"
    raise Sorry("%s has only zero or negative %s: give measured data." % (source, kind))
