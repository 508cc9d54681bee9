"""Writing the phasing results: MTZ, SHELX .fcf, CCP4 map, JSON.

All in the original space group and setting:

* MTZ (for refinement and model building): FP, SIGFP (type F, Q), PHIB (P),
  FOM (W) and the map coefficients FWT (F) = FOM * FP, PHWT (P) = PHIB.  Only
  measured reflections unless the extension is asked for, which adds the
  unmeasured reflections of the list with PHI_EXT (P) and FOM_EXT (W) only.
* A separate MTZ of the extended phases alone (PHI_EXT, FOM_EXT).
* SHELX .fcf in the LIST 3 layout (h k l Fo sigma(Fo) A B, A + iB = FOM * Fo
  * exp(i phase)), written as a CIF block through iotbx.cif, for Olex2.
* A CCP4 map of FOM * Fo * exp(i phase) over the unit cell, sigma-scaled.
* A JSON summary.
* With a starting model (``result.model_building``, see
  :mod:`phai_cctbx.starting_model`): SHELX .res and .ins, the data as .hkl
  (HKLF 4) and the model as CIF.

:class:`OutputFiles` refuses to overwrite files unless told to, and writes
everything to temporary names first, renaming only when all succeeded, so a
failed run leaves nothing half-written.
"""
from __future__ import absolute_import, division, print_function

import json
import os

from cctbx import miller
from cctbx.array_family import flex
from libtbx.utils import Sorry

import iotbx.cif
import iotbx.cif.model


def _sigmas_or_zero(f_obs):
  if f_obs.sigmas() is not None:
    return f_obs
  return f_obs.customized_copy(sigmas=flex.double(f_obs.size(), 0.0))


def mtz_dataset(result, include_extended=False):
  """An iotbx MTZ dataset with FP, SIGFP, PHIB, FOM, FWT, PHWT (and the extension)."""
  f_obs = _sigmas_or_zero(result.f_obs).set_observation_type_xray_amplitude()
  ds = f_obs.as_mtz_dataset(column_root_label="FP")
  ds.add_miller_array(result.phases, column_root_label="PHIB", column_types="P")
  ds.add_miller_array(result.fom, column_root_label="FOM", column_types="W")
  fwt = result.phased.amplitudes()
  phwt = result.phased.phases(deg=True)
  ds.add_miller_array(fwt, column_root_label="FWT", column_types="F")
  ds.add_miller_array(phwt, column_root_label="PHWT", column_types="P")
  if include_extended and result.extended.size():
    ds.add_miller_array(result.extended, column_root_label="PHI_EXT", column_types="P")
    ds.add_miller_array(result.extended_fom, column_root_label="FOM_EXT", column_types="W")
  return ds


def write_mtz(result, file_name, include_extended=False):
  ds = mtz_dataset(result, include_extended=include_extended)
  mtz = ds.mtz_object()
  mtz.add_history("phai.solve: PhAI phases (%s)" % result.verdict)
  mtz.write(file_name)


def write_extended_mtz(result, file_name):
  """Phases of the unmeasured reflections of the list (no amplitudes)."""
  ds = result.extended.as_mtz_dataset(column_root_label="PHI_EXT", column_types="P")
  ds.add_miller_array(result.extended_fom, column_root_label="FOM_EXT", column_types="W")
  mtz = ds.mtz_object()
  mtz.add_history("phai.solve: PhAI phase extension, unmeasured reflections")
  mtz.write(file_name)


def fcf_block(result):
  """A CIF block in the SHELX LIST 3 layout: h k l Fo sigma(Fo) A B."""
  phased = result.phased
  f_obs = _sigmas_or_zero(result.f_obs)
  f, coeffs = f_obs.common_sets(phased)
  cs = f.crystal_symmetry()
  block = iotbx.cif.model.block()
  block["_shelx_refln_list_code"] = "3"
  block["_shelx_F_calc_maximum"] = "%.2f" % (flex.max(flex.abs(coeffs.data())) if coeffs.size() else 0)
  block["_reflns_d_resolution_high"] = "%.4f" % f.d_min()
  block.update(cs.as_cif_block())
  loop = iotbx.cif.model.loop(header=(
    "_refln_index_h", "_refln_index_k", "_refln_index_l",
    "_refln_F_meas", "_refln_F_sigma", "_refln_A_calc", "_refln_B_calc"))
  for h, fo, s, c in zip(f.indices(), f.data(), f.sigmas(), coeffs.data()):
    loop.add_row((h[0], h[1], h[2], "%.2f" % fo, "%.2f" % s,
                  "%.2f" % c.real, "%.2f" % c.imag))
  block.add_loop(loop)
  return block


def write_fcf(result, file_name, data_name="phai"):
  cif = iotbx.cif.model.cif()
  cif[data_name] = fcf_block(result)
  with open(file_name, "w") as f:
    print(cif, file=f)


def write_map(result, file_name, resolution_factor=1 / 3.):
  """CCP4 map of the phased data over the unit cell, in units of sigma."""
  fft = result.phased.fft_map(resolution_factor=resolution_factor)
  fft.apply_sigma_scaling()
  # Labels given: cctbx's default list is a mutable default argument that
  # grows with every call, and its length is asserted (at most 10), so a
  # process that writes maps ten times would fail.
  fft.as_ccp4_map(file_name=file_name, labels=[
    "phai.solve: FOM-weighted map, sigma-scaled",
    "values outside the cell are wrapped inside"])


def write_json(summary, file_name):
  with open(file_name, "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
    f.write("\n")


class OutputFiles(object):
  """A set of output files written all together, or not at all.

  Args:
    prefix: path prefix; files are prefix + suffix (".mtz", ".log", ...).
    overwrite: replace existing files.
  """

  def __init__(self, prefix, overwrite=False):
    if not prefix:
      raise Sorry("No output prefix: give output.prefix=NAME.")
    self.prefix = prefix
    self.overwrite = overwrite
    self._pending = []
    self._stale = []

  def name(self, suffix):
    return self.prefix + suffix

  def check(self, suffixes):
    """Sorry if any target exists (without overwrite) or the folder is missing."""
    folder = os.path.dirname(os.path.abspath(self.prefix))
    if not os.path.isdir(folder):
      raise Sorry("Output folder %s does not exist: create it or give another "
                  "output.prefix." % folder)
    if self.overwrite:
      return
    existing = [self.name(s) for s in suffixes if os.path.exists(self.name(s))]
    if existing:
      raise Sorry("%s already exist%s: give output.overwrite=True or another "
                  "output.prefix." % (", ".join(existing), "s" if len(existing) == 1 else ""))

  def add(self, suffix, writer):
    """Write with writer(temporary_file_name) now; the file appears at commit()."""
    final = self.name(suffix)
    tmp = "%s.%d.part%s" % (self.prefix, os.getpid(), suffix)
    try:
      writer(tmp)
    except Exception:
      if os.path.exists(tmp):
        os.remove(tmp)
      self.discard()
      raise
    self._pending.append((tmp, final))
    return final

  def remove_at_commit(self, suffixes):
    """With overwrite, existing files of these suffixes go at commit(): left
    from an earlier run, they would not match this one.  Returns their names."""
    if not self.overwrite:
      return []
    self._stale = [self.name(s) for s in suffixes if os.path.exists(self.name(s))]
    return list(self._stale)

  def discard(self):
    for tmp, final in self._pending:
      if os.path.exists(tmp):
        os.remove(tmp)
    self._pending = []

  def commit(self):
    """Move every written file to its name; returns the names."""
    names = []
    for tmp, final in self._pending:
      os.replace(tmp, final)
      names.append(final)
    self._pending = []
    for name in self._stale:
      if name not in names and os.path.exists(name):
        os.remove(name)
    self._stale = []
    return names


def output_suffixes(result, log=True):
  """Suffixes of the files :func:`write_all` writes for this result."""
  suffixes = [".mtz", ".fcf", ".ccp4", ".json"]
  if log:
    suffixes.append(".log")
  if result.extended.size():
    suffixes.append("_extended.mtz")
  if result.model_building is not None:
    suffixes.extend(result.model_building.suffixes())
  return suffixes


def write_all(result, prefix, overwrite=False, log_text=None, include_extended=False,
              map_resolution_factor=1 / 3., remove_stale=()):
  """Write prefix.mtz, .fcf, .ccp4, .json, (.log), prefix_extended.mtz and,
  with a starting model, prefix.res, .ins, .hkl and prefix_model.cif.

  remove_stale: suffixes of files from an earlier run to remove when this
  run does not write them (with overwrite only; see OutputFiles.check).
  Returns the list of files written.
  """
  out = OutputFiles(prefix, overwrite=overwrite)
  suffixes = output_suffixes(result, log=log_text is not None)
  out.check(suffixes)
  out.remove_at_commit([s for s in remove_stale if s not in suffixes])
  summary = result.summary()
  summary["files"] = {s.strip("._").replace(".", "_"): out.name(s) for s in suffixes}
  out.add(".mtz", lambda fn: write_mtz(result, fn, include_extended=include_extended))
  if result.extended.size():
    out.add("_extended.mtz", lambda fn: write_extended_mtz(result, fn))
  out.add(".fcf", lambda fn: write_fcf(result, fn))
  out.add(".ccp4", lambda fn: write_map(result, fn, map_resolution_factor))
  if result.model_building is not None:
    for suffix, writer in result.model_building.writers():
      out.add(suffix, writer)
  out.add(".json", lambda fn: write_json(summary, fn))
  if log_text is not None:
    def write_log(fn):
      with open(fn, "w") as f:
        f.write(log_text)
    out.add(".log", write_log)
  return out.commit()
