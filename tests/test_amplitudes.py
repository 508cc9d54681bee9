"""Tests of phai_cctbx.amplitudes: merging, absences, I -> F."""
import pytest

from cctbx import crystal, miller
from cctbx.array_family import flex
from cctbx.development import random_structure
from cctbx import sgtbx
from libtbx.utils import Sorry

from phai_cctbx import amplitudes


def _intensities(symbol="P 1 21/c 1", d_min=1.0, with_absences=True):
  xs = random_structure.xray_structure(
    space_group_info=sgtbx.space_group_info(symbol),
    unit_cell=(6.1, 7.2, 8.3, 90, 104, 90), elements=["C"] * 4 + ["O"] * 2,
    u_iso=0.02, use_u_iso=True, random_u_iso=False, random_f_prime_d_min=0)
  f = xs.structure_factors(d_min=d_min, algorithm="direct").f_calc().amplitudes()
  i = f.f_as_f_sq()
  i = i.customized_copy(sigmas=flex.sqrt(i.data()) * 0.1 + 0.01 * flex.max(i.data()))
  i.set_observation_type_xray_intensity()
  return f, i


def test_merging_and_absences():
  f, i = _intensities()
  # every reflection twice, the second in another asymmetric unit; and absences
  other = miller.array(
    miller.set(i.crystal_symmetry(), flex.miller_index(
      [(-h, k, -l) for h, k, l in i.indices()]), anomalous_flag=False), i.data(), i.sigmas())
  absent_idx = flex.miller_index([(1, 0, 1), (0, 3, 0), (2, 0, 3)])
  absent = miller.array(miller.set(i.crystal_symmetry(), absent_idx, anomalous_flag=False),
                        flex.double([0.1, -0.2, 0.3]), flex.double([1.0, 1.0, 1.0]))
  all_i = i.concatenate(other).concatenate(absent)
  all_i.set_observation_type_xray_intensity()
  a = amplitudes.prepare_amplitudes(all_i)
  assert a.n_read == 2 * i.size() + 3
  assert a.n_absent == 3
  assert a.n_unique == i.size() + 3
  assert a.r_int is not None and a.r_int < 1e-6
  assert a.f_obs.size() == i.size()
  assert a.f_obs.is_xray_amplitude_array()
  assert "French-Wilson" in a.treatment
  assert a.describe() and a.as_dict()["n_systematic_absences"] == 3


def test_french_wilson_close_to_sqrt_for_strong():
  f, i = _intensities()
  a = amplitudes.prepare_amplitudes(i)
  fm, am = f.common_sets(a.f_obs)
  strong = fm.data() > 0.5 * flex.max(fm.data())
  ratio = (am.data() / fm.data()).select(strong)
  assert flex.max(flex.abs(ratio - 1)) < 0.05


def test_sqrt_without_sigmas():
  f, i = _intensities()
  i = i.customized_copy(sigmas=None)
  data = i.data().deep_copy()
  data[0] = -5.0
  i = i.customized_copy(data=data)
  i.set_observation_type_xray_intensity()
  a = amplitudes.prepare_amplitudes(i)
  assert "sqrt" in a.treatment
  assert a.f_obs.data().all_ge(0)
  assert a.f_obs.size() == i.size()


def test_truncate_at_zero_on_request():
  f, i = _intensities()
  a = amplitudes.prepare_amplitudes(i, treatment="truncate_at_zero")
  assert "as asked" in a.treatment
  with pytest.raises(Sorry):
    amplitudes.prepare_amplitudes(i, treatment="other")


def test_amplitudes_merged_only():
  f, i = _intensities()
  f.set_observation_type_xray_amplitude()
  a = amplitudes.prepare_amplitudes(f)
  assert a.f_obs.size() == f.size()
  assert flex.max(flex.abs(a.f_obs.data() - f.data())) < 1e-9


def test_only_absences_is_an_error():
  cs = crystal.symmetry(unit_cell=(6.1, 7.2, 8.3, 90, 104, 90), space_group_symbol="P 1 21/c 1")
  absent = miller.array(miller.set(cs, flex.miller_index([(1, 0, 1), (0, 3, 0)])),
                        flex.double([5.0, 3.0]), flex.double([1.0, 1.0]))
  absent.set_observation_type_xray_intensity()
  with pytest.raises(Sorry):
    amplitudes.prepare_amplitudes(absent)
