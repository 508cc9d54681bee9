"""From reflections as read to merged amplitudes in the crystal's space group.

The steps, all cctbx:

1. Friedel mates are averaged (the network phases centrosymmetric structures)
   and symmetry equivalents are merged (``miller.array.merge_equivalents``;
   R_int is reported).
2. Systematic absences of the space group are removed and counted, with their
   mean I/sigma (a large value hints at a wrong space group).
3. Intensities become amplitudes by French and Wilson's Bayesian treatment
   (``cctbx.french_wilson``), which gives weak and negative intensities
   positive, finite amplitudes.  Without usable sigmas it cannot be applied,
   and F = sqrt(max(I, 0)) is used instead (negative intensities become zero
   amplitudes).  Amplitudes as read are only merged.
"""
from __future__ import absolute_import, division, print_function

import io

from cctbx.array_family import flex
from libtbx.utils import Sorry


class Amplitudes(object):
  """Merged amplitudes with the record of how they were made.

  Attributes:
    f_obs: merged amplitudes (with sigmas where known) in the original space
      group and setting, systematic absences removed.
    n_read: reflections read.
    n_unique: unique reflections after merging (absences included).
    n_absent: systematic absences removed; absent_i_over_sigma their mean
      I/sigma (None without sigmas).
    r_int: the merging R factor (None when nothing was merged).
    treatment: how intensities became amplitudes.
    n_rejected: reflections the treatment rejected.
  """

  def __init__(self, f_obs, n_read, n_unique, n_absent, absent_i_over_sigma,
               r_int, treatment, n_rejected, notes):
    self.f_obs = f_obs
    self.n_read = n_read
    self.n_unique = n_unique
    self.n_absent = n_absent
    self.absent_i_over_sigma = absent_i_over_sigma
    self.r_int = r_int
    self.treatment = treatment
    self.n_rejected = n_rejected
    self.notes = notes

  def describe(self):
    lines = ["Merged %d reflections to %d unique (%s)" % (
      self.n_read, self.n_unique,
      "R_int %.3f" % self.r_int if self.r_int is not None else "no equivalents")]
    if self.n_absent:
      extra = ""
      if self.absent_i_over_sigma is not None:
        extra = ", mean I/sigma %.2f" % self.absent_i_over_sigma
      lines.append("  %d systematic absences removed%s" % (self.n_absent, extra))
    else:
      lines.append("  no systematic absences in the data")
    lines.append("  amplitudes: %s" % self.treatment)
    if self.n_rejected:
      lines.append("  %d reflections rejected by that treatment" % self.n_rejected)
    lines.extend("  " + n for n in self.notes)
    lines.append("  %d unique amplitudes, resolution %.2f - %.2f A" % (
      self.f_obs.size(), self.f_obs.d_max_min()[0], self.f_obs.d_min()))
    return lines

  def as_dict(self):
    return {
      "n_read": self.n_read, "n_unique": self.n_unique,
      "n_systematic_absences": self.n_absent,
      "absences_mean_i_over_sigma": self.absent_i_over_sigma,
      "r_int": self.r_int, "treatment": self.treatment,
      "n_rejected": self.n_rejected, "n_amplitudes": self.f_obs.size(),
      "d_min": self.f_obs.d_min(),
    }


def _merge(ma):
  """(merged array, R_int or None) with Friedel mates averaged."""
  ma = ma.customized_copy(anomalous_flag=False).map_to_asu()
  merged = ma.merge_equivalents(use_internal_variance=False)
  r_int = None
  if merged.redundancies().data().all_gt(1) or \
     (merged.redundancies().data() > 1).count(True):
    try:
      r_int = merged.r_int()
    except Exception:
      r_int = merged.r_merge()
  return merged.array(), r_int


def _usable_sigmas(ma):
  return ma.sigmas() is not None and (ma.sigmas() > 0).count(True) > 0


def prepare_amplitudes(miller_array, treatment="french_wilson"):
  """Merge, drop absences and (for intensities) convert to amplitudes.

  Args:
    miller_array: real array of intensities or amplitudes with crystal
      symmetry, merged or not.
    treatment: "french_wilson" (default for intensities with sigmas) or
      "truncate_at_zero" (F = sqrt(max(I, 0))).

  Returns an :class:`Amplitudes`; Sorry when nothing positive remains.
  """
  if treatment not in ("french_wilson", "truncate_at_zero"):
    raise Sorry("Unknown intensity treatment %r: give french_wilson or "
                "truncate_at_zero." % treatment)
  ma = miller_array
  n_read = ma.size()
  notes = []
  if ma.indices().size() and (ma.indices() == (0, 0, 0)).count(True):
    ma = ma.select(ma.indices() != (0, 0, 0))
  merged, r_int = _merge(ma)
  n_unique = merged.size()
  absent = merged.sys_absent_flags().data()
  n_absent = absent.count(True)
  absent_ios = None
  if n_absent and merged.sigmas() is not None:
    a = merged.select(absent)
    ok = a.sigmas() > 0
    if ok.count(True):
      absent_ios = flex.mean(a.data().select(ok) / a.sigmas().select(ok))
  merged = merged.select(~absent)
  if merged.size() == 0 or not (merged.data() > 0).count(True):
    kind = "intensities" if merged.is_xray_intensity_array() else "amplitudes"
    raise Sorry("No positive %s remain after merging and removing systematic "
                "absences: check the data and the space group." % kind)
  n_rejected = 0
  if merged.is_xray_intensity_array():
    use_fw = treatment == "french_wilson" and _usable_sigmas(merged)
    if use_fw:
      bad_sigma = ~(merged.sigmas() > 0)
      if bad_sigma.count(True):
        notes.append("%d reflections without a positive sigma dropped" %
                     bad_sigma.count(True))
        merged = merged.select(~bad_sigma)
      from cctbx import french_wilson
      try:
        f_obs = french_wilson.french_wilson_scale(
          miller_array=merged, log=io.StringIO())
      except Exception as e:  # too few reflections per bin, for example
        f_obs = None
        notes.append("French-Wilson failed (%s); used F = sqrt(max(I, 0))"
                     % str(e).splitlines()[0] if str(e) else type(e).__name__)
      if f_obs is not None:
        n_rejected = merged.size() - f_obs.size()
        how = "French-Wilson (cctbx.french_wilson), weak and negative I given positive F"
    if not use_fw or f_obs is None:
      i_pos = merged.data().deep_copy()
      i_pos.set_selected(i_pos < 0, 0.0)
      fs = flex.sqrt(i_pos)
      sig = None
      if merged.sigmas() is not None:
        # sigma(F) = sigma(I) / (2 F), bounded for weak reflections
        import numpy as np
        f_np = np.maximum(fs.as_numpy_array(), 1e-3 * max(flex.max(fs), 1e-30))
        sig = merged.sigmas() / flex.double(2.0 * f_np)
      f_obs = merged.customized_copy(data=fs, sigmas=sig)
      if use_fw:
        how = "F = sqrt(max(I, 0))"
      elif treatment == "truncate_at_zero":
        how = "F = sqrt(max(I, 0)) (as asked)"
      else:
        how = "F = sqrt(max(I, 0)) (no sigmas for French-Wilson)"
    f_obs = f_obs.set_observation_type_xray_amplitude()
  else:
    f_obs = merged.customized_copy(
      data=merged.data().deep_copy().set_selected(merged.data() < 0, 0.0))
    f_obs = f_obs.set_observation_type_xray_amplitude()
    how = "amplitudes as read (negative values set to zero)"
  f_obs.set_info(miller_array.info())
  return Amplitudes(f_obs, n_read, n_unique, n_absent, absent_ios, r_int, how,
                    n_rejected, notes)
