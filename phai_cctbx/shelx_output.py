"""SHELX and CIF files of a starting model, for SHELXL, Olex2 and others.

``<prefix>.res`` and ``<prefix>.hkl`` are what SHELXT hands its user: an
instruction file with the cell, symmetry, scattering factors and atoms, and
the reflection data as HKLF 4, which ``shelxl <prefix>`` (after copying the
.res to .ins) or Olex2 open without edits.  The cell, LATT and SYMM lines
come from cctbx's SHELX writer (``iotbx.shelx.writer``), in the data's own
space group and setting; the model CIF is cctbx's ``_atom_site`` block.
"""
from __future__ import annotations

from cctbx.eltbx import tiny_pse
from cctbx.array_family import flex
from libtbx.utils import Sorry
import iotbx.cif.model
import iotbx.shelx.writer

# Refinement instructions that SHELXL and Olex2 expect in a fresh .res:
# ten cycles, an fcf for maps, a difference map with 20 peaks.
DEFAULT_INSTRUCTIONS = ("L.S. 10", "LIST 4", "FMAP 2", "PLAN 20", "WGHT 0.1")

# SHELX's Mo K-alpha wavelength, for CELL when none is known.
MO_K_ALPHA = 0.71073

# The largest intensity written (F8.2 holds up to 99999.99).
HKL_MAX = 99999.0


def _version():
  import phai_cctbx
  return "(phai_cctbx %s)" % phai_cctbx.__version__


def _sfac_order(elements):
  """SHELX convention: C and H first, then by atomic number."""
  first = [e for e in ("C", "H") if e in elements]
  rest = sorted((e for e in elements if e not in ("C", "H")),
                key=lambda e: tiny_pse.table(e).atomic_number())
  return first + rest


def _count(value):
  return "%d" % int(round(value)) if abs(value - round(value)) < 1e-6 \
    else "%g" % value


def _unit_content(model, z=None, notes=None):
  """(SFAC order, element -> atoms per cell) for SFAC and UNIT.

  The composition's unit-cell content when the input gave one (SFAC/UNIT of
  a .ins, a CIF formula times Z); a formula times the input's Z; otherwise
  the atoms placed, with hydrogens estimated (see :func:`_hydrogen_count`).
  Every element of the model is on SFAC.
  """
  comp = model.composition
  placed = dict((e, n) for e, n in
                model.xray_structure.unit_cell_content().items() if n > 0)
  if comp is not None and comp.counts is not None and (comp.per_cell or z):
    factor = 1 if comp.per_cell else z
    content = dict((e, comp.counts[e] * factor) for e in comp.symbols)
    order = list(comp.symbols)
    for e in placed:
      if e not in content:
        order.append(e)
        content[e] = placed[e]
    if notes is not None and not comp.per_cell:
      notes.append("UNIT: the formula %s times Z = %g" % (comp, z))
    return order, content
  content = dict(placed)
  n_h = _hydrogen_count(model, content)
  elements = list(content)
  if n_h is not None and n_h > 0:
    content["H"] = n_h
    elements.append("H")
  if notes is not None:
    how = ("from the formula's H count per non-H atom"
           if comp is not None and comp.counts is not None else
           "about one per carbon")
    notes.append("UNIT: no unit-cell content in the input; counts of the atoms "
                  "placed%s" % ("" if n_h is None else
                                ", hydrogens %s (%d)" % (how, n_h)))
  if not elements:
    elements, content = ["C"], {"C": 0}
  if comp is not None:   # the user's order, as SHELX's SFAC
    order = [e for e in comp.symbols if e in content]
    order += [e for e in _sfac_order(elements) if e not in order]
    return order, content
  return _sfac_order(elements), content


def _hydrogen_count(model, content):
  """Hydrogen atoms per cell for UNIT (hydrogens are not placed).

  From the formula when it has counts, scaled by the non-hydrogen atoms
  found; otherwise about one per carbon.  None when the elements given
  exclude hydrogen.
  """
  comp = model.composition
  n_found = sum(content.values())
  if comp is not None:
    if "H" not in comp.symbols:
      return None
    if comp.counts is not None:
      n_formula = sum(comp.counts[e] for e in comp.non_hydrogen())
      if n_formula > 0:
        return int(round(comp.counts["H"] * n_found / n_formula))
  return int(round(content.get("C", 0)))


def res_lines(model, title=None, wavelength=None,
              instructions=DEFAULT_INSTRUCTIONS, remarks=(), cell_esds=None,
              z=None, notes=None):
  """Lines of a SHELX .res file for the model (see :func:`write_res`).

  ``wavelength``, ``cell_esds`` (six esds) and ``z`` as the input gave them;
  where None, SHELX's defaults (Mo K-alpha; zero esds; Z of one formula unit
  per asymmetric unit).  ``notes``: a list that gets a line for the log per
  value not taken from the input.
  """
  xs = model.xray_structure
  if xs.scatterers().size() == 0:
    raise Sorry("The starting model has no atoms; no .res written.")
  if notes is None:
    notes = []
  if title is None:
    title = "phai"
  if wavelength is None:
    wavelength = MO_K_ALPHA
    notes.append("CELL: wavelength not in the input; SHELX's default %.5f A "
                 "(Mo K-alpha) written (give wavelength= to change it)"
                 % MO_K_ALPHA)
  z_given = z
  if z is None:
    z = xs.space_group().order_z()
    notes.append("ZERR: Z not in the input; %d written (one formula unit per "
                 "asymmetric unit)" % z)
  if cell_esds is None:
    cell_esds = (0.0,) * 6
    notes.append("ZERR: cell esds not in the input; zeros written (SHELX's "
                 "default)")
  zerr = "ZERR %s %s" % (_count(z), " ".join("%.5g" % e for e in cell_esds))
  title = " ".join(str(title).split())
  header = []
  if xs.space_group().is_centric() and \
      not xs.space_group().is_origin_centric():
    raise Sorry("SHELX needs the origin on an inversion centre in a "
                "centrosymmetric space group; %s does not have it."
                % xs.space_group_info())
  try:
    for line in iotbx.shelx.writer.generator(
        xs, data_are_intensities=True, title=title, wavelength=wavelength,
        full_matrix_least_squares_cycles=10, sort_scatterers=False):
      if line.startswith("SFAC"):
        break
      if line.startswith("ZERR"):
        line = zerr
      if line.strip():
        header.append(line.rstrip("\n"))
  except RuntimeError as e:
    raise Sorry("Cannot write a SHELX file for %s: %s"
                % (xs.space_group_info(), e))
  lines = header[:1]
  lines.append("REM Starting model from phai.solve %s (%s); hydrogen atoms not placed"
               % (_version(), model.source()))
  for r in remarks:
    lines.append("REM %s" % r)
  lines.extend(header[1:])

  sfac, content = _unit_content(model, z=z_given, notes=notes)
  if not any(l.startswith("ZERR") for l in lines):
    lines.insert(next(i for i, l in enumerate(lines) if l.startswith("CELL")) + 1,
                 zerr)
  lines.append("SFAC %s" % " ".join(sfac))
  lines.append("UNIT %s" % " ".join(
    _count(content[e]) if content[e] > 0 else "1" for e in sfac))
  lines.extend(instructions)
  lines.append("FVAR 1.00000")
  index = dict((e, i + 1) for i, e in enumerate(sfac))
  order_z = xs.space_group().order_z()
  names = set()
  for sc in xs.scatterers():
    name = sc.label.strip()
    if not name or len(name) > 4 or name.upper() in names:
      raise Sorry("Atom name %r is not a valid, unique SHELX name." % name)
    names.add(name.upper())
    sof = 10.0 + sc.occupancy * sc.multiplicity() / order_z
    lines.append("%-4s %2d %10.6f %10.6f %10.6f %10.5f %9.5f" % (
      (name, index[sc.scattering_type]) + tuple(sc.site)
      + (sof, sc.u_iso)))
  lines.append("HKLF 4")
  lines.append("END")
  return lines


def write_res(model, file_name, title=None, wavelength=None,
              instructions=DEFAULT_INSTRUCTIONS, remarks=(), cell_esds=None,
              z=None):
  """Write the model as a SHELX .res in the original space group and setting.

  TITL, CELL (``wavelength`` in A, Mo K-alpha when not given), ZERR, LATT,
  SYMM, SFAC, UNIT (hydrogens counted but not placed), refinement
  instructions, FVAR, the atoms with isotropic U, HKLF 4 and END.
  """
  lines = res_lines(model, title=title, wavelength=wavelength,
                    instructions=instructions, remarks=remarks,
                    cell_esds=cell_esds, z=z)
  with open(file_name, "w") as f:
    f.write("\n".join(lines) + "\n")
  return file_name


def write_hkl(miller_array, file_name):
  """Write reflection data as SHELX HKLF 4 (intensities and sigmas).

  Amplitudes are squared, their sigmas propagated (sigma(I) = 2 F sigma(F))
  by cctbx.  Intensities are rescaled so that the largest is 99999 when they
  would overflow the F8.2 format or lose precision in it (largest below
  1000); SHELXL's scale factor absorbs this.  Returns the scale applied.
  """
  ma = miller_array
  if ma.is_complex_array():
    raise Sorry("write_hkl needs amplitudes or intensities, not complex "
                "structure factors.")
  if not ma.is_xray_intensity_array():
    if ma.observation_type() is None:
      ma = ma.customized_copy()
      ma.set_observation_type_xray_amplitude()
    ma = ma.f_as_f_sq()
  if ma.size() == 0:
    raise Sorry("No reflections to write to %s." % file_name)
  top = flex.max(flex.abs(ma.data()))
  scale = 1.0
  if top > HKL_MAX or 0 < top < 1000:
    scale = HKL_MAX / top
    sigmas = ma.sigmas() * scale if ma.sigmas() is not None else None
    ma = ma.customized_copy(data=ma.data() * scale, sigmas=sigmas)
  with open(file_name, "w") as f:
    ma.export_as_shelx_hklf(file_object=f, normalise_if_format_overflow=True)
  return scale


def value_with_esd(value, esd):
  """A CIF number with its esd in parentheses ("4.633(5)"); plain without one."""
  import math
  if not esd or esd <= 0:
    return "%.4f" % value
  n = max(0, -int(math.floor(math.log10(esd))))
  digits = int(round(esd * 10 ** n))
  if digits < 2:      # one significant digit of 1: keep two (as SHELXL does)
    n += 1
    digits = int(round(esd * 10 ** n))
  return "%.*f(%d)" % (n, value, digits)


def write_model_cif(model, file_name, data_name="phai_model", wavelength=None,
                    z=None, cell_esds=None):
  """Write the model as CIF (cell, symmetry and ``_atom_site`` loop).

  With the input's ``wavelength``, ``z`` and ``cell_esds`` (six esds), and
  the composition of the model (the unit-cell content over Z as
  ``_chemical_formula_sum``), as far as they are known.
  """
  block = model.xray_structure.as_cif_block()
  block["_computing_structure_solution"] = "'phai.solve %s'" % _version()
  if cell_esds is not None:
    params = model.xray_structure.unit_cell().parameters()
    for key, value, esd in zip(
        ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta",
         "angle_gamma"), params, cell_esds):
      block["_cell.%s" % key] = value_with_esd(value, esd)
  if z:
    block["_cell.formula_units_Z"] = _count(z)
  if wavelength:
    block["_diffrn_radiation.wavelength"] = "%.5f" % wavelength
  comp = model.composition
  if comp is not None and comp.counts is not None:
    per = z if comp.per_cell and z else 1
    block["_chemical_formula.sum"] = "'%s'" % " ".join(
      "%s%s" % (e, "" if abs(comp.counts[e] / per - 1) < 1e-6
                else _count(comp.counts[e] / per)) for e in comp.symbols)
  cif = iotbx.cif.model.cif()
  cif[data_name] = block
  with open(file_name, "w") as f:
    f.write(str(cif))
  return file_name
