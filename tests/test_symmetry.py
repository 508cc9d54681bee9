"""Tests of phai_cctbx.symmetry: settings, supergroups, forward and back."""
import numpy as np
import pytest

from cctbx import crystal, miller, sgtbx
from cctbx.array_family import flex
from cctbx.development import random_structure
from libtbx.utils import Sorry

from phai_cctbx import reflection_set, symmetry

CASES = [
  ("P 1 21/c 1", (6.1, 7.2, 8.3, 90, 104, 90)),
  ("P 1 21/n 1", (4.633, 8.4, 6.577, 90, 100.37, 90)),
  ("P 1 21/a 1", (8.3, 7.2, 6.1, 90, 97, 90)),
  ("P 21/b 1 1", (8.3, 7.2, 6.1, 95, 90, 90)),
  ("P 1 21/c 1", (5.0, 6.0, 9.0, 90, 140, 90)),  # non-reduced cell
  ("C 1 2/c 1", (9.5, 6.2, 8.1, 90, 111, 90)),
  ("P b c a", (7.1, 8.2, 9.3, 90, 90, 90)),
  ("P n m a", (9.2, 6.1, 7.7, 90, 90, 90)),
  ("P b c n", (7.1, 8.2, 9.3, 90, 90, 90)),
  ("C 1 2/m 1", (9.5, 6.2, 8.1, 90, 111, 90)),
  ("P b n m", (7.7, 9.2, 6.1, 90, 90, 90)),
]


def _structure(symbol, cell, seed=1):
  sgi = sgtbx.space_group_info(symbol)
  xs = random_structure.xray_structure(
    space_group_info=sgi, unit_cell=cell, elements=["C"] * 3 + ["O"] * 2,
    use_u_iso=True, u_iso=0.02, min_distance=1.0,
    random_f_prime_d_min=0, random_u_iso=False)
  return xs


def _frame_fcalc(xs, std):
  """F calculated directly in the P 1 21/c 1 frame on the reflection list."""
  p1 = xs.expand_to_p1().change_basis(std.cb_op)
  idx = flex.miller_index([tuple(int(x) for x in h) for h in reflection_set.indices()])
  ms = miller.set(crystal.symmetry(p1.unit_cell(), "P 1"), idx, anomalous_flag=False)
  return ms.structure_factors_from_scatterers(p1, algorithm="direct").f_calc()


@pytest.mark.parametrize("symbol,cell", CASES)
def test_standardisation_reaches_standard_frame(symbol, cell):
  cs = crystal.symmetry(unit_cell=cell, space_group_symbol=symbol)
  std = symmetry.prepare(cs)
  assert cs.space_group().change_basis(std.cb_op).is_compatible_unit_cell(
    std.p21c_symmetry.unit_cell())
  assert std.subgroup.change_basis(std.cb_op) == symmetry.P21C.group()
  assert std.is_supergroup == (cs.space_group().type().number() != 14)
  a, b, c, al, be, ga = std.p21c_symmetry.unit_cell().parameters()
  assert be >= 90 - 1e-6
  assert max(a, c) <= max(cs.unit_cell().parameters()[:3]) + 1e-6
  assert std.describe()


@pytest.mark.parametrize("symbol,cell", CASES)
def test_complex_data_mapped_with_phase_shifts(symbol, cell):
  cs = crystal.symmetry(unit_cell=cell, space_group_symbol=symbol)
  std = symmetry.prepare(cs)
  xs = _structure(symbol, cell)
  f = xs.structure_factors(d_min=0.9, algorithm="direct").f_calc()
  values, present, stats = std.map_to_reflection_set(f, return_stats=True)
  ref = _frame_fcalc(xs, std).data().as_numpy_array()
  d = std.set_d_spacings()
  assert present.sum() > 100
  scale = np.abs(ref).max()
  # Every reflection of the list within the resolution is present unless it
  # is a P2_1/c absence; values agree with F computed in the new frame.
  within = d >= f.d_min() + 1e-6
  assert np.all(present[within] | reflection_set.systematic_absences()[within])
  assert np.allclose(values[present], ref[present], atol=1e-6 * scale)
  # Centrosymmetric with the origin on an inversion centre: real values.
  assert np.allclose(values.imag, 0, atol=1e-6 * scale)
  assert stats["n_kept"] + stats["n_dropped"] == stats["n_unique_in_frame"]


@pytest.mark.parametrize("symbol,cell", CASES)
def test_signs_back_to_original_group(symbol, cell):
  cs = crystal.symmetry(unit_cell=cell, space_group_symbol=symbol)
  std = symmetry.prepare(cs)
  xs = _structure(symbol, cell, seed=2)
  f = xs.structure_factors(d_min=1.2, algorithm="direct").f_calc()
  ref = _frame_fcalc(xs, std).data().as_numpy_array().real
  signs = np.where(ref >= 0, 1.0, -1.0)
  back = std.from_reflection_set(signs, f)
  assert back.n_phased > 0.5 * f.size()
  assert back.n_disagreeing == 0
  fm, pm = f.common_sets(back.phases)
  strong = flex.abs(fm.data()) > 1e-3 * flex.max(flex.abs(fm.data()))
  dphi = (fm.phases(deg=True).data() - pm.data()).select(strong)
  dphi = flex.double([abs((x + 180) % 360 - 180) for x in dphi])
  assert flex.max(dphi) < 1e-3
  if cs.space_group().order_p() > 4:
    # The point group is larger than 2/m, so reflections split.
    # Flip the signs of part of the list: some equivalents now disagree.
    rng = np.random.RandomState(0)
    noisy = signs * np.where(rng.uniform(size=signs.size) < 0.2, -1, 1)
    back = std.from_reflection_set(noisy, f)
    assert back.n_with_equivalents > 0
    assert 0 < back.disagreement < 1


def test_unsupported_group_named():
  cs = crystal.symmetry(unit_cell=(5, 6, 7, 80, 85, 95), space_group_symbol="P -1")
  with pytest.raises(Sorry) as e:
    symmetry.prepare(cs)
  assert "P2_1/c" in str(e.value) and "Pbca" in str(e.value)


def test_incompatible_cell():
  cs = crystal.symmetry(unit_cell=(5, 6, 7, 80, 100, 90), space_group_symbol="P 1 21/c 1",
                        assert_is_compatible_unit_cell=False,
                        force_compatible_unit_cell=False)
  with pytest.raises(Sorry) as e:
    symmetry.prepare(cs)
  assert "not compatible" in str(e.value)


def test_missing_symmetry():
  with pytest.raises(Sorry) as e:
    symmetry.prepare(crystal.symmetry(space_group_symbol="P 1 21/c 1"))
  assert "unit_cell" in str(e.value)
  with pytest.raises(Sorry) as e:
    symmetry.prepare(crystal.symmetry(unit_cell=(5, 6, 7, 90, 100, 90)))
  assert "space_group" in str(e.value)


def test_large_cell_truncated_and_counted():
  cs = crystal.symmetry(unit_cell=(6.0, 14.0, 8.0, 90, 100, 90), space_group_symbol="P 1 21/c 1")
  std = symmetry.prepare(cs)
  ms = miller.build_set(cs, anomalous_flag=False, d_min=1.0)
  f = ms.array(data=flex.double(ms.size(), 1.0))
  values, present, stats = std.map_to_reflection_set(f, return_stats=True)
  assert stats["n_dropped"] > 0
  assert stats["n_kept"] + stats["n_dropped"] == ms.size()
  assert stats["d_min_kept"] > 1.0
  assert any("exceeds" in line for line in std.describe())


@pytest.mark.parametrize("symbol,cell", CASES)
def test_every_frame_carries_the_data_there_and_back(symbol, cell):
  """Each frame (other cells, other P2_1/c subgroups) is a valid standardisation:
  F calculated in it matches the mapped data, and true signs come back to the
  original group's phases."""
  cs = crystal.symmetry(unit_cell=cell, space_group_symbol=symbol)
  frames = symmetry.frames(cs)
  first = symmetry.prepare(cs)
  assert frames[0].cb_op.as_xyz() == first.cb_op.as_xyz()
  assert [f.cb_op.as_xyz() for f in symmetry.frames(cs, count=2)] == \
    [f.cb_op.as_xyz() for f in frames[:2]]
  cells = [tuple(round(x, 2) for x in f.p21c_symmetry.unit_cell().parameters()) for f in frames]
  assert len(set(cells)) == len(cells) > 1
  keys = [symmetry._cell_key(f.p21c_symmetry.unit_cell()) for f in frames]
  assert keys[0] == min(keys)
  # Subgroups that differ only by an origin shift give the same cell, and the
  # same amplitudes on the list: one frame for them.
  ops = lambda g: tuple(sorted(str(o) for o in g.all_ops()))
  allowed = [ops(g) for g in symmetry._p21c_subgroups(cs.space_group())] \
    if cs.space_group().type().number() != 14 else [ops(cs.space_group())]
  assert all(ops(f.subgroup) in allowed for f in frames)
  xs = _structure(symbol, cell, seed=2)
  f = xs.structure_factors(d_min=1.2, algorithm="direct").f_calc()
  for std in frames[:6]:
    assert std.subgroup.change_basis(std.cb_op) == symmetry.P21C.group()
    ref = _frame_fcalc(xs, std).data().as_numpy_array()
    values, present = std.map_to_reflection_set(f)
    scale = np.abs(ref).max()
    assert np.allclose(values[present], ref[present], atol=1e-6 * scale)
    signs = np.where(ref.real >= 0, 1.0, -1.0)
    back = std.from_reflection_set(signs, f)
    assert back.n_disagreeing == 0
    fm, pm = f.common_sets(back.phases)
    strong = flex.abs(fm.data()) > 1e-3 * flex.max(flex.abs(fm.data()))
    dphi = (fm.phases(deg=True).data() - pm.data()).select(strong)
    assert max(abs((x + 180) % 360 - 180) for x in dphi) < 1e-3
