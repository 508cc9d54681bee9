"""Random P2_1/c structures: cell limits, symmetry, contacts, density, batches."""
import numpy as np
import pytest

pytest.importorskip("rdkit")
from cctbx import crystal, sgtbx, xray  # noqa: E402
from cctbx.array_family import flex  # noqa: E402
from phai_cctbx.training.molecules import build_library  # noqa: E402
from phai_cctbx.training.structures import (  # noqa: E402
  StructureGenerator, Structure, contact_thresholds, _element_class, orthogonalisation)

SYMBOLS = {1: "H", 3: "Li", 6: "C", 7: "N", 8: "O", 9: "F", 11: "Na", 12: "Mg", 13: "Al",
           14: "Si", 15: "P", 16: "S", 17: "Cl", 19: "K", 20: "Ca", 25: "Mn", 26: "Fe",
           27: "Co", 28: "Ni", 29: "Cu", 30: "Zn", 35: "Br", 37: "Rb", 38: "Sr", 47: "Ag",
           48: "Cd", 53: "I", 55: "Cs", 56: "Ba"}


@pytest.fixture(scope="module")
def library():
  return build_library(20, seed=11, processes=1, metal_fraction=0.3)


@pytest.fixture(scope="module")
def organic(library):
  gen = StructureGenerator(library, np.random.default_rng(1), inorganic_fraction=0.0)
  return [gen.sample() for _ in range(6)]


@pytest.fixture(scope="module")
def centred(library):
  gen = StructureGenerator(library, np.random.default_rng(2), inorganic_fraction=0.0,
                           inversion_fraction=1.0)
  return [gen.sample() for _ in range(4)]


@pytest.fixture(scope="module")
def inserted(library):
  gen = StructureGenerator(library, np.random.default_rng(4), inorganic_fraction=0.0,
                           inversion_fraction=0.5, packing="insert",
                           volume_per_atom=(18.0, 30.0))
  return [gen.sample() for _ in range(8)]


@pytest.fixture(scope="module")
def inorganic(library):
  gen = StructureGenerator(library, np.random.default_rng(3), inorganic_fraction=1.0)
  return [gen.sample() for _ in range(6)]


def all_structures(organic, centred, inorganic):
  return organic + centred + inorganic


def pair_distances(s):
  """(d, i, j, intra) for all pairs of atoms and periodic images under 4 A;
  intra marks distances within one body (for a pair of atoms of one body, its
  shortest image; an atom with itself at zero translation)."""
  m = orthogonalisation(s.cell[0], s.cell[1], s.cell[2], s.cell[4])
  f = s.frac.astype(np.float64)
  diff = f[None, :, :] - f[:, None, :]
  n = len(f)
  same = s.body[:, None] == s.body[None, :]
  best = np.full((n, n), np.inf)
  rows = []
  for t in np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3):
    d = np.linalg.norm((diff + t) @ m.T, axis=-1)
    best = np.where(same, np.minimum(best, d), best)
    i, j = np.nonzero(d < 4.0)
    rows.append((d[i, j], i, j))
  d, i, j = [np.concatenate(x) for x in zip(*rows)]
  intra = same[i, j] & (np.abs(d - best[i, j]) < 1e-9)
  return d, i, j, intra


def test_cells_within_limits(organic, centred, inorganic):
  for s in all_structures(organic, centred, inorganic):
    assert isinstance(s, Structure)
    a, b, c, al, be, ga = s.cell
    assert 3.5 - 1e-6 <= min(a, b, c) and max(a, b, c) <= 10.0
    assert al == 90 and ga == 90 and 90 <= be <= 120
    assert s.frac.dtype == np.float32 and s.numbers.dtype == np.int8
    assert s.frac.min() >= 0 and s.frac.max() < 1
    assert len(s.numbers) <= 400 and len(s.asym) <= 100


def test_density_in_window(organic, centred):
  for s in organic + centred:
    assert 14.0 <= s.volume_per_heavy_atom() <= 26.0


def test_closed_under_p21c_with_cctbx(organic, centred, inorganic):
  for s in all_structures(organic, centred, inorganic):
    assert_closed_under_p21c(s)


def assert_closed_under_p21c(s):
    sym = crystal.symmetry(unit_cell=tuple(float(x) for x in s.cell),
                           space_group_symbol="P 1 21/c 1")
    scatterers = flex.xray_scatterer()
    for k, idx in enumerate(s.asym):
      scatterers.append(xray.scatterer(
        label="A%d" % k, site=tuple(float(x) for x in s.frac[idx]),
        scattering_type=SYMBOLS[int(s.numbers[idx])]))
    xs = xray.structure(crystal_symmetry=sym, scatterers=scatterers)
    p1 = xs.expand_to_p1(sites_mod_positive=True)
    assert p1.scatterers().size() == len(s.numbers)
    sites = np.array(p1.sites_frac())
    diff = sites[:, None, :] - s.frac[None, :, :].astype(np.float64)
    diff -= np.round(diff)
    dist = np.abs(diff).max(-1)
    assert dist.min(1).max() < 1e-4
    assert (dist < 1e-4).sum(0).max() == 1
    # every operation maps the atom set onto itself
    ops = sgtbx.space_group_info("P 1 21/c 1").group()
    for op in ops:
      r = np.array(op.r().as_double()).reshape(3, 3)
      t = np.array(op.t().as_double())
      img = s.frac.astype(np.float64) @ r.T + t
      dd = img[:, None, :] - s.frac[None, :, :]
      dd -= np.round(dd)
      assert np.abs(dd).max(-1).min(1).max() < 1e-4


def test_no_clashes(organic, centred):
  for s in organic + centred:
    assert_no_clashes(s, contact_thresholds())


def assert_no_clashes(s, thr):
    d, i, j, intra = pair_distances(s)
    assert (d[i != j] > 0.9).all()  # never two atoms on one site
    other = ~intra
    cls = _element_class(s.numbers)
    need = thr[cls[i[other]], cls[j[other]]]
    assert (d[other] >= need - 1e-3).all()


def test_inorganic_structures(inorganic):
  for s in inorganic:
    assert s.kind == "inorganic"
    d, i, j, intra = pair_distances(s)
    assert (d[~intra] > 1.8).all()
    assert (s.numbers != 1).all()


def test_inversion_centre_units(centred):
  for s in centred:
    f = s.frac.astype(np.float64)
    m = orthogonalisation(s.cell[0], s.cell[1], s.cell[2], s.cell[4])
    found = False
    for centre in np.array([[0, 0, 0], [.5, 0, 0], [0, 0, .5], [.5, 0, .5]]):
      img = 2 * centre - f
      dd = img[:, None, :] - f[None, :, :]
      dd -= np.round(dd)
      d = np.linalg.norm(dd @ m.T, axis=-1)
      heavy = s.numbers != 1
      pair = d[np.ix_(heavy, heavy)]
      # a bond from an atom to its own image, or a metal on the centre
      if (np.diag(pair) > 1.3).any() and (np.diag(pair) < 1.6).any():
        found = True
      if (np.diag(d) < 1e-4).any():
        found = True
    assert found


def test_batch_padding(library):
  gen = StructureGenerator(library, np.random.default_rng(4), inorganic_fraction=0.5)
  batch = gen.sample_batch(3)
  assert batch["frac"].shape == (3, 400, 3) and batch["frac"].dtype == np.float32
  assert batch["numbers"].shape == (3, 400) and batch["numbers"].dtype == np.int8
  assert batch["cell"].shape == (3, 6) and batch["cell"].dtype == np.float32
  for k in range(3):
    n = int((batch["numbers"][k] != 0).sum())
    assert n > 0
    assert (batch["numbers"][k, :n] != 0).all() and (batch["numbers"][k, n:] == 0).all()
    assert (batch["frac"][k, n:] == 0).all()


def test_random_insertion_packing(inserted):
  """The fast packer: same symmetry, limits and (slightly shorter) contacts."""
  # units on inversion centres have 2 copies in the cell, general ones 4
  assert any(len(set(s.body.tolist())) % 4 == 2 for s in inserted)
  for s in inserted:
    a, b, c, al, be, ga = s.cell
    assert 3.5 - 1e-6 <= min(a, b, c) and max(a, b, c) <= 10.0 + 1e-6
    assert 18.0 - 1e-6 <= s.volume_per_heavy_atom() <= 30.0 + 1e-6
    assert_closed_under_p21c(s)
    assert_no_clashes(s, 0.9 * contact_thresholds())


def test_unknown_packing_refused(library):
  with pytest.raises(ValueError, match="packing"):
    StructureGenerator(library, np.random.default_rng(0), packing="squeeze")
