"""Random P2_1/c structures: cell limits, symmetry, contacts, density, batches."""
import numpy as np
import pytest

pytest.importorskip("rdkit")
from cctbx import crystal, sgtbx, xray  # noqa: E402
from cctbx.eltbx import tiny_pse  # noqa: E402
from cctbx.array_family import flex  # noqa: E402
from phai_cctbx.training.molecules import build_library  # noqa: E402
from phai_cctbx.training.structures import (  # noqa: E402
  StructureGenerator, Structure, contact_thresholds, insertion_thresholds, _element_class,
  orthogonalisation)

def symbol(z):
  return tiny_pse.table(int(z)).symbol()


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
        scattering_type=symbol(s.numbers[idx])))
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


def structure_classes(s):
  """Contact classes of a structure's atoms: a hydrogen whose nearest atom of
  its own body is N or O is an N-H/O-H hydrogen."""
  m = orthogonalisation(s.cell[0], s.cell[1], s.cell[2], s.cell[4])
  f = s.frac.astype(np.float64)
  parents = np.full(len(f), -1)
  for h in np.nonzero(s.numbers == 1)[0]:
    d = f - f[h]
    d -= np.round(d)
    dist = np.linalg.norm(d @ m.T, axis=-1)
    dist[(s.body != s.body[h]) | (s.numbers == 1)] = np.inf
    parents[h] = int(np.argmin(dist))
  return _element_class(s.numbers, parents)


def assert_no_clashes(s, thr):
    d, i, j, intra = pair_distances(s)
    assert (d[i != j] > 0.9).all()  # never two atoms on one site
    other = ~intra
    cls = structure_classes(s)
    need = thr[cls[i[other]], cls[j[other]]]
    assert (d[other] >= need - 1e-3).all()


def test_inorganic_structures(inorganic):
  for s in inorganic:
    assert s.kind == "inorganic"
    d, i, j, intra = pair_distances(s)
    assert (d[~intra] > 1.8).all()
    assert (s.numbers != 1).all()


def test_inorganic_variety_and_density(library):
  """Ionic structures: cations from across the periodic table (heavy ones
  included), complex anions, and mineral-like densities."""
  gen = StructureGenerator(library, np.random.default_rng(8), inorganic_fraction=1.0)
  structures = [gen.sample() for _ in range(30)]
  elements = set(int(z) for s in structures for z in s.numbers)
  assert any(z > 36 for z in elements)              # heavy scatterers occur
  assert elements & {14, 15, 16} and 8 in elements  # oxo-anions occur
  assert max(len(s.asym) for s in structures) >= 5
  volume = np.median([s.volume_per_heavy_atom() for s in structures])
  assert 8.0 < volume < 26.0, volume


def test_flat_molecule_sizes(library):
  """flat_sizes=1 draws each size equally often, however few molecules of
  that size the library has; flat_sizes=0 draws molecules uniformly."""
  heavy = library.heavy_counts()
  sizes = np.unique(heavy)
  for flat in (0.0, 1.0):
    gen = StructureGenerator(library, np.random.default_rng(9), flat_sizes=flat)
    picked = heavy[[gen._pick(100) for _ in range(4000)]]
    share = np.array([(picked == k).mean() for k in sizes])
    expected = (np.full(len(sizes), 1 / len(sizes)) if flat else
                np.array([(heavy == k).mean() for k in sizes]))
    assert np.abs(share - expected).max() < 0.04, (flat, share, expected)
  small = gen._pick(int(sizes[0]))
  assert heavy[small] == sizes[0]


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
    assert 14.0 - 1e-6 <= s.volume_per_heavy_atom() <= 30.0 + 1e-6  # squeezed to 14 at most
    assert_closed_under_p21c(s)
    assert_no_clashes(s, insertion_thresholds(contact_thresholds()))


def test_unknown_packing_refused(library):
  with pytest.raises(ValueError, match="packing"):
    StructureGenerator(library, np.random.default_rng(0), packing="squeeze")


def _brute_force_clash(new_f, new_c, owner, placed_f, placed_c, m, thr2):
  """Every pair of atoms over translations -2..2 from the nearest image
  along each axis; a pair of one copy at zero translation is a bond, not a
  contact."""
  f = np.concatenate([new_f, placed_f]).astype(np.float64)
  c = np.concatenate([new_c, placed_c])
  body = np.concatenate([owner, np.full(len(placed_f), -1)])
  n_new = len(new_f)
  d = f[:n_new, None, :] - f[None, :, :]
  r = np.round(d)
  same = body[:n_new, None] == body[None, :]
  for t in np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3):
    d2 = (((d - r + t) @ m.T) ** 2).sum(-1)
    bond = same & (t == r).all(-1)
    if ((d2 < thr2[c[:n_new, None], c[None, :]]) & ~bond).any():
      return True
  return False


def test_clash_check_agrees_with_brute_force(library):
  """The fast check (copy 0 only, nearest images, bonds within a body kept
  apart from contacts with its own images) gives the same verdict as every
  pair over 125 translations, for cells with edges down to 3.5 A where a
  molecule meets its own images."""
  from phai_cctbx.training.structures import (
    _clash, orient, OPS_ROT, OPS_TRANS)
  rng = np.random.default_rng(5)
  thr2 = insertion_thresholds(contact_thresholds()) ** 2
  verdicts = []
  for trial in range(60):
    a, b, c = rng.uniform(3.5, 10.0, 3) if trial % 2 else rng.uniform(10.0, 20.0, 3)
    beta = rng.uniform(90, 120)
    m = orthogonalisation(a, b, c, beta)
    coords, numbers, _ = library.molecule(int(rng.integers(len(library))))
    rel = orient(coords - coords.mean(0), rng)
    f = rng.random(3) + rel @ np.linalg.inv(m).T
    new_f = np.concatenate([OPS_ROT[op] * f + OPS_TRANS[op] for op in range(4)])
    new_c = np.tile(_element_class(numbers), 4)
    owner = np.repeat(np.arange(4), len(numbers))
    # a few placed atoms, closed under the group
    p = rng.random((2 * (trial % 3 == 0), 3))
    placed_f = np.concatenate([OPS_ROT[op] * p + OPS_TRANS[op] for op in range(4)])
    placed_c = np.tile(_element_class(np.array([6, 8])[:len(p)]), 4)
    fast = _clash(new_f.astype(np.float32), new_c, owner, placed_f.astype(np.float32),
                  placed_c, m.astype(np.float32), thr2)
    slow = _brute_force_clash(new_f, new_c, owner, placed_f, placed_c, m, thr2)
    assert fast == slow, trial
    verdicts.append(fast)
  assert 10 < sum(verdicts) < len(verdicts) - 10  # both verdicts were tested


def test_clash_with_own_image_along_b():
  """Two atoms of one molecule 3.2 A apart along a 4 A axis b: the molecule's
  own image along b comes within 0.8 A of it."""
  from phai_cctbx.training.structures import _clash
  m = orthogonalisation(8.0, 4.0, 8.0, 100.0)
  thr2 = contact_thresholds() ** 2
  cls = _element_class(np.array([6, 6]))
  new_f = np.array([[0.3, 0.1, 0.3], [0.3, 0.9, 0.3]], np.float32)
  empty_f, empty_c = np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
  assert _clash(new_f, cls, np.zeros(2, int), empty_f, empty_c, m.astype(np.float32), thr2)
  # the same pair 3.2 A apart along a 8 A axis is a clear molecule
  new_f = np.array([[0.3, 0.1, 0.3], [0.3, 0.5, 0.3]], np.float32)
  m = orthogonalisation(8.0, 8.0, 8.0, 100.0)
  assert not _clash(new_f, cls, np.zeros(2, int), empty_f, empty_c, m.astype(np.float32), thr2)


def test_hydrogen_bonds_allowed_other_short_contacts_not():
  """An O-H hydrogen may sit 1.8 A from another molecule's O (a hydrogen
  bond); a C-H hydrogen may not, and neither may a C 2.8 A from an O."""
  from phai_cctbx.training.structures import _clash
  m = orthogonalisation(9.0, 9.0, 9.0, 90.0).astype(np.float32)
  thr2 = contact_thresholds() ** 2
  empty_f, empty_c = np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
  # molecule 1: O-H (H at 0.97 A); molecule 2: a lone O at 1.8 A from that H
  o_h = np.array([[0.0, 0.0, 0.0], [0.97, 0.0, 0.0]]) / 9.0 + 0.3
  lone_o = np.array([[0.97 + 1.8, 0.0, 0.0]]) / 9.0 + 0.3
  frac = np.concatenate([o_h, lone_o]).astype(np.float32)
  owner = np.array([0, 0, 1])
  polar = _element_class(np.array([8, 1]), parents=np.array([-1, 0]))
  assert list(polar) == [5, 4]
  o = _element_class(np.array([8]))
  assert not _clash(frac, np.concatenate([polar, o]), owner, empty_f, empty_c, m, thr2)
  c_h = _element_class(np.array([6, 1]), parents=np.array([-1, 0]))
  assert list(c_h) == [1, 0]
  assert _clash(frac, np.concatenate([c_h, o]), owner, empty_f, empty_c, m, thr2)
  # insertion keeps hydrogen-bond lengths but shortens the others by 10 %
  ins = insertion_thresholds(contact_thresholds())
  assert ins[4, 5] == contact_thresholds()[4, 5] and ins[1, 1] == 0.9 * contact_thresholds()[1, 1]


def test_squeeze_after_insertion_makes_denser_cells(library):
  """The squeeze after random insertion shrinks the cells (contacts still
  checked by test_random_insertion_packing)."""
  volumes = {}
  for squeeze in (False, True):
    gen = StructureGenerator(library, np.random.default_rng(6), inorganic_fraction=0.0,
                             packing="insert", volume_per_atom=(18.0, 30.0), squeeze=squeeze)
    volumes[squeeze] = np.median([gen.sample().volume_per_heavy_atom() for _ in range(12)])
  assert volumes[True] < 0.95 * volumes[False], volumes
