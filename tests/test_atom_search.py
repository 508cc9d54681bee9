"""The direct-space atom search (phai_cctbx.atom_search) and its stage in
phai.solve's search."""
import io
import os

import numpy as np
import pytest

from cctbx import crystal, sgtbx, uctbx, xray
from cctbx.array_family import flex

from phai_cctbx import atom_search, benchmark, search, symmetry
from phai_cctbx.model_building import Composition, parse_elements

NAHCOLITE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "structures",
                         "p21c_small", "BobHanson_Nahcolite.cif")


def _structure():
  """A small ionic cell, P2_1/c: Ca on an inversion centre (2 per cell), S
  and O in general positions."""
  cs = xray.structure(crystal_symmetry=crystal.symmetry(
    unit_cell=(5.2, 6.1, 7.3, 90, 101, 90), space_group_symbol="P 1 21/c 1"))
  for label, site in (("Ca1", (0.0, 0.0, 0.0)), ("S1", (0.31, 0.22, 0.41)),
                      ("O1", (0.12, 0.38, 0.27)), ("O2", (0.55, 0.09, 0.18))):
    cs.add_scatterer(xray.scatterer(label=label, site=site, u=0.01))
  return cs


def _f_obs(xs, d_min):
  xs.scattering_type_registry(table="wk1995")
  return xs.structure_factors(d_min=d_min, algorithm="direct").f_calc()


def test_atoms_of_the_asymmetric_unit_split_counts_onto_special_positions():
  p21c = sgtbx.space_group_info("P 1 21/c 1").group()
  # Na3AlF6, Z = 2: Al on an inversion centre (1/2), Na one full and one half.
  elements, occ = atom_search.asymmetric_unit_atoms({"Na": 6, "Al": 2, "F": 12}, p21c)
  assert elements == ("Al", "Na", "Na", "F", "F", "F")
  assert list(occ) == [0.5, 1.0, 0.5, 1.0, 1.0, 1.0]
  # Hydrogen is left out; too many atoms: None.
  elements, _ = atom_search.asymmetric_unit_atoms({"C": 8, "H": 16, "O": 4}, p21c)
  assert elements == ("O", "C", "C")
  assert atom_search.asymmetric_unit_atoms({"C": 80}, p21c, max_atoms=12) is None
  assert atom_search.asymmetric_unit_atoms({"H": 8}, p21c) is None


def test_special_positions_and_their_origin_classes():
  # P2_1/c: four pairs of inversion centres, one origin class (any of them
  # can be the origin).
  p21c = atom_search.special_positions(sgtbx.space_group_info("P 1 21/c 1").group())
  assert list(p21c) == [2] and len(p21c[2]) == 4
  assert {cls for _, _, dof, cls in p21c[2]} == {0}
  assert all(dof == 0 for _, _, dof, _ in p21c[2])
  # C2/m: the mirror, the two kinds of 2-fold axis (one class), the two
  # kinds of inversion centre of multiplicity 4 (one class).
  c2m = atom_search.special_positions(sgtbx.space_group_info("C 1 2/m 1").group())
  four = [(dof, cls) for _, _, dof, cls in c2m[4]]
  assert sorted(d for d, _ in four) == [0, 0, 1, 1, 2]
  classes = {}
  for dof, cls in four:
    classes.setdefault(dof, set()).add(cls)
  assert all(len(c) == 1 for c in classes.values()) and len(set().union(*classes.values())) == 3
  # The operators are projections: a projected site stays where it is.
  for rot, trans, _, _ in c2m[4] + c2m[2]:
    site = rot @ np.array([0.31, 0.17, 0.42]) + trans
    assert np.allclose(rot @ site + trans, site)


def test_layouts_of_an_element():
  pnma = sgtbx.space_group_info("P n m a").group()
  specials = atom_search.special_positions(pnma)
  # 8 K in Pnma: one general atom, or two on special positions (two mirrors).
  layouts = atom_search.element_layouts(8, 8, specials)
  assert [(l.general, l.special) for l in layouts] == [(1, ()), (0, (4, 4))]
  # 24 O: three general atoms, one, two or all of them split onto mirrors.
  layouts = atom_search.element_layouts(24, 8, specials)
  assert [(l.general, l.special) for l in layouts] == [
    (3, ()), (2, (4, 4)), (1, (4,) * 4), (0, (4,) * 6)]
  # Remainders on the fewest special positions; none in P2_1/c are split.
  p21c = atom_search.special_positions(sgtbx.space_group_info("P 1 21/c 1").group())
  assert [(l.general, l.special) for l in atom_search.element_layouts(6, 4, p21c)] == [(1, (2,))]
  # A count no special position takes: a partial general atom.
  assert atom_search.element_layouts(6.5, 4, p21c)[0].partial == pytest.approx(0.625)


def test_sampled_layouts_hold_the_composition():
  group = sgtbx.space_group_info("P n a m").group()
  counts = {"K": 8, "Cr": 4, "O": 16}
  layouts = atom_search.sample_layouts(counts, group, 400, seed=3)
  specials = atom_search.special_positions(group)
  points = {tuple(np.round(t % 1, 3)) for _, t, dof, _ in specials[4] if dof == 0}
  kinds = set()
  for r in range(400):
    elements, occ, rot, trans = layouts.used(r)
    for e, n in counts.items():
      assert sum(q for x, q in zip(elements, occ) if x == e) * 8 == pytest.approx(n)
    taken = [tuple(np.round(t % 1, 3)) for x, t in zip(rot, trans) if not x.any()]
    assert len(taken) == len(set(taken)) and set(taken) <= points
    first = next((k for k, q in enumerate(occ) if q < 1), None)
    if first is not None and not rot[first].any():
      # The first atom on a point: the representative of its origin class.
      assert tuple(np.round(trans[first] % 1, 3)) == tuple(
        np.round(next(t for _, t, dof, _ in specials[4] if dof == 0) % 1, 3))
    kinds.add(tuple(np.round(occ, 2)))
  # Both the layout of fewest atoms and split ones are tried.
  assert (0.5, 1.0, 1.0, 1.0) in kinds and any(len(k) > 4 for k in kinds)


def test_the_search_keeps_atoms_on_their_special_positions(monkeypatch):
  """A mirror structure in Pnma, 2.0 A: the search puts the atoms of half
  occupancy on mirrors (or points) and finds the structure."""
  cs = xray.structure(crystal_symmetry=crystal.symmetry(
    unit_cell=(7.6, 5.9, 10.1, 90, 90, 90), space_group_symbol="P n m a"))
  for label, site in (("K1", (0.17, 0.25, 0.09)), ("S1", (0.42, 0.25, 0.31)),
                      ("O1", (0.31, 0.25, 0.44)), ("O2", (0.38, 0.03, 0.24))):
    cs.add_scatterer(xray.scatterer(label=label, site=site, u=0.01))
  fc = _f_obs(cs, 2.0)
  f_obs = abs(fc).set_observation_type_xray_amplitude()
  models = atom_search.run(f_obs, {"K": 4, "S": 4, "O": 12}, restarts=512, rounds=3, seed=0)
  best = models[0]
  assert best.r1 < 0.03
  for site, rot, trans in zip(best.sites, best.rot, best.trans):
    assert np.allclose((rot @ site + trans - site + 0.5) % 1 - 0.5, 0, atol=1e-5)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  assert benchmark.Truth(std, fc).r(search.list_signs(std, f_obs, best.phases),
                                    benchmark.measured_on_list(std, f_obs)) > 0.95
  free = atom_search.model_free_r1(f_obs, best)
  assert np.isfinite(free) and best.free_r1 == free
  # Kept on the model: asked again (a second search's models judged beside
  # the first's), it is not refined again.
  refined = []
  monkeypatch.setattr(atom_search.AtomSearch, "free_r1",
                      lambda self, *a, **k: refined.append(1) or np.array([0.5]))
  assert atom_search.model_free_r1(f_obs, best) == free and not refined
  other = models[1]
  assert atom_search.model_free_r1(f_obs, other) == 0.5 and refined == [1]


def _brute_force_nearest(unit_cell, group, sites, i):
  """Distance from atom i to the nearest other atom or copy (not its own
  copy within 0.5 A), over every operation and neighbouring cell."""
  best = 99.0
  for j, xj in enumerate(sites):
    for op in group.all_ops():
      copy = np.array(op * tuple(xj))
      for shift in np.ndindex(5, 5, 5):
        d = unit_cell.distance(tuple(sites[i]), tuple(copy + np.array(shift) - 2))
        if i == j and d < 0.5:
          continue
        best = min(best, d)
  return best


def test_bond_penalty_measures_distances_under_symmetry():
  """The penalty's nearest neighbours agree with a brute-force search over
  symmetry copies and cells; bonded atoms, an atom on an inversion centre
  and unused atoms cost nothing; a stray atom and a clash cost what the
  definition says."""
  import torch
  cs = crystal.symmetry(unit_cell=(6.3, 7.1, 8.2, 90, 104, 90), space_group_symbol="P 1 21/c 1")
  f_obs = abs(_f_obs(xray.structure(crystal_symmetry=cs, scatterers=flex.xray_scatterer(
    [xray.scatterer("C1", (0.1, 0.2, 0.3))])), 2.0))
  uc, group = cs.unit_cell(), cs.space_group()
  orth = np.array(uc.orthogonalization_matrix()).reshape(3, 3)
  frac = np.linalg.inv(orth)
  # A chain C-C-C-O of 1.5 A bonds, a C on the inversion centre at 1/2,0,0
  # bonded to nothing, and an unused atom.
  chain = [np.array([1.0, 1.2, 1.4])]
  for step in ([1.5, 0, 0], [0, 1.5, 0], [0, 0, 1.5]):
    chain.append(chain[-1] + np.array(step))
  centres = [np.array(v) / 2.0 for v in np.ndindex(2, 2, 2)]
  for centre in centres:
    sites = np.array([frac @ c for c in chain] + [centre, [0.3, 0.3, 0.3]])
    nearest = [_brute_force_nearest(uc, group, sites[:5], i) for i in range(5)]
    if nearest[4] > 2.0:
      break
  assert nearest[4] > 2.0
  elements = ("C", "C", "C", "O", "C", "C")
  occupancies = np.array([1, 1, 1, 1, 0.5, 0.0])
  engine = atom_search.AtomSearch(f_obs, elements, occupancies)
  t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
  assert max(nearest[:4]) == pytest.approx(1.5, abs=1e-6)
  expected = (nearest[4] - atom_search.BOND_LIMITS["C"]) ** 2 / 5
  got = float(engine.bond_penalty(t(sites[None]), t(occupancies[None]))[0])
  assert got == pytest.approx(expected, rel=1e-3)
  # Random placements: the penalty's nearest-neighbour term against brute
  # force (clashes are rare at these densities; those placements skipped).
  rng = np.random.default_rng(4)
  for _ in range(5):
    x = rng.random((6, 3))
    near = np.array([_brute_force_nearest(uc, group, x, i) for i in range(6)])
    if near.min() < atom_search.CLASH_DISTANCE:
      continue
    limits = np.array([atom_search.BOND_LIMITS[e] for e in elements])
    bond = np.sum(np.maximum(near - limits, 0) ** 2) / 6
    got = float(engine.bond_penalty(t(x[None]), t(np.ones((1, 6))))[0])
    assert got == pytest.approx(bond, rel=1e-3)
  # Two atoms 0.8 A apart: each counts the other's shortfall.
  pair = np.array([frac @ np.array([2.0, 2.0, 2.0]), frac @ np.array([2.8, 2.0, 2.0])])
  pair = np.concatenate([pair, np.zeros((4, 3))])
  got = float(engine.bond_penalty(t(pair[None]), t([[1, 1, 0, 0, 0, 0]]))[0])
  assert got == pytest.approx(2 * (atom_search.CLASH_DISTANCE - 0.8) ** 2 / 2, rel=1e-3)


def test_bonded_placements_descend_to_a_molecule():
  """A molecular composition marks a share of the placements bonded; their
  descent pulls a stray atom back to a bond, free placements are left to
  R1 alone."""
  assert atom_search.molecular({"C": 32, "H": 36, "O": 16})
  assert not atom_search.molecular({"C": 8, "Fe": 4, "O": 16})
  assert not atom_search.molecular({"Na": 4, "S": 4, "O": 16})
  # Aspirin (13 atoms) is searched; 13 free atoms of an inorganic cell are not.
  p21c = sgtbx.space_group_info("P 1 21/c 1").group()
  aspirin = {"C": 36, "H": 32, "O": 16}
  assert atom_search.atom_limit(aspirin) == atom_search.MAX_MOLECULAR_ATOMS
  assert atom_search.asymmetric_unit_atoms(aspirin, p21c, atom_search.atom_limit(aspirin))
  oxide = {"Cu": 16, "S": 4, "O": 32}
  assert atom_search.atom_limit(oxide) == atom_search.MAX_ATOMS == 12
  assert atom_search.asymmetric_unit_atoms(oxide, p21c, atom_search.atom_limit(oxide)) is None
  p21c = sgtbx.space_group_info("P 1 21/c 1").group()
  layouts = atom_search.sample_layouts({"C": 24, "O": 8}, p21c, 400, seed=1)
  assert abs(layouts.bonded.mean() - atom_search.BONDED_SHARE) < 0.08
  # An ionic cell keeps the same share to its contacts.
  salt = atom_search.sample_layouts({"Na": 4, "Cl": 4}, p21c, 400, seed=1)
  assert abs(salt.bonded.mean() - atom_search.BONDED_SHARE) < 0.08
  kept = layouts.take(np.arange(10)).join(layouts.take(np.arange(10, 20)))
  assert list(kept.bonded) == list(layouts.bonded[:20])
  import torch
  xs = _structure()
  f_obs = abs(_f_obs(xs, 2.0))
  engine = atom_search.AtomSearch(f_obs, ("C", "C", "C"), np.ones(3))
  orth = np.array(f_obs.unit_cell().orthogonalization_matrix()).reshape(3, 3)
  frac = np.linalg.inv(orth)
  t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
  # A bonded pair and a third atom where it is farthest from any copy.
  pair = [frac @ np.array(c) for c in ([1, 1, 1], [2.5, 1, 1])]
  trials = np.array([pair + [x] for x in np.random.default_rng(0).random((200, 3))])
  sites = trials[int(np.argmax(engine.bond_penalty(t(trials), t(np.ones((200, 3))))))]
  two = atom_search.Layouts(("C", "C", "C"), np.ones((2, 3)), np.tile(np.eye(3), (2, 3, 1, 1)),
                            np.zeros((2, 3, 3)), np.array([True, False]))
  before = engine.bond_penalty(t(np.stack([sites, sites])), t(two.occupancies))
  x, _ = engine._descend(t(np.stack([sites, sites])), t([1.5, 1.5]), 300, 0.002,
                         layout=engine.as_tensors(two))
  after = engine.bond_penalty(x, t(two.occupancies))
  assert float(before[0]) > 0.1
  assert float(after[0]) < 0.1 * float(before[0])
  assert float(after[0]) < 0.5 * float(after[1]), (before, after)


def test_contact_penalty_measures_short_contacts_under_symmetry():
  """An ionic cell's penalty: each distance below its pair's contact
  (anion-anion, metal-metal, metal-anion, any other) costs its squared
  shortfall, counted from both atoms, per atom; contacts at or beyond the
  limit and unused atoms cost nothing; a symmetry copy counts as the atom."""
  import torch
  assert atom_search.contact_distance("O", "F") == atom_search.ANION_CONTACT
  assert atom_search.contact_distance("Na", "Cu") == atom_search.METAL_CONTACT
  assert atom_search.contact_distance("O", "Mg") == atom_search.METAL_ANION_CONTACT
  assert atom_search.contact_distance("Mg", "O") == atom_search.METAL_ANION_CONTACT
  assert atom_search.contact_distance("C", "O") == atom_search.MIN_CONTACT
  assert atom_search.contact_distance("Na", "Cl") == atom_search.MIN_CONTACT
  cs = crystal.symmetry(unit_cell=(9.0, 9.5, 10.0, 90, 90, 90), space_group_symbol="P 1 21/c 1")
  f_obs = abs(_f_obs(xray.structure(crystal_symmetry=cs, scatterers=flex.xray_scatterer(
    [xray.scatterer("O1", (0.1, 0.2, 0.3))])), 2.0))
  engine = atom_search.AtomSearch(f_obs, ("Mg", "O", "O", "Si"), np.ones(4))
  assert not engine.molecular
  t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
  frac = lambda xyz: np.array(xyz) / np.array([9.0, 9.5, 10.0])
  # Mg-O 1.3 A (short by 0.25), O-O 1.8 A (short by 0.2), the second O
  # 1.61 A from Mg (short by nothing: 1.55 is the limit), Si far away.
  mg, o1 = frac([2.0, 2.0, 2.0]), frac([3.3, 2.0, 2.0])
  o2 = frac([3.3 - 1.8 * 0.5, 2.0 + 1.8 * np.sqrt(3) / 2, 2.0])
  assert np.linalg.norm((o2 - mg) * [9.0, 9.5, 10.0]) > 1.55
  si = frac([4.5, 6.0, 7.5])
  sites = np.array([mg, o1, o2, si])
  expected = 2 * (0.25 ** 2 + 0.2 ** 2) / 4
  got = float(engine.contact_penalty(t(sites[None]), t(np.ones((1, 4))))[0])
  assert got == pytest.approx(expected, rel=1e-3)
  # Unused: the first oxygen gone, nothing is short.
  got = float(engine.contact_penalty(t(sites[None]), t([[1, 0, 1, 1]]))[0])
  assert got == pytest.approx(0.0, abs=1e-9)
  # A symmetry copy: the inversion centre at the origin puts an oxygen at x
  # (0.5 A along a) 1.0 A from its copy at -x, one short neighbour.
  lone = np.array([frac([4.5, 4.7, 5.0]), frac([0.5, 0.0, 0.0]), frac([1.0, 6.0, 2.0]),
                   frac([6.0, 2.0, 7.0])])
  got = float(engine.contact_penalty(t(lone[None]), t([[0, 1, 0, 0]]))[0])
  assert got == pytest.approx((atom_search.ANION_CONTACT - 1.0) ** 2, rel=1e-3)


def test_descent_kicks_are_random_and_reproducible():
  """Random kicks move a descent off its path; the same generator seed
  repeats it exactly."""
  import torch
  xs = _structure()
  f_obs = abs(_f_obs(xs, 2.0))
  engine = atom_search.AtomSearch(f_obs, ("C", "C", "C"), np.ones(3))
  start = torch.tensor(np.random.default_rng(3).random((4, 3, 3)), dtype=torch.float32)
  b = torch.full((4,), 1.5)

  def descend(noise, seed):
    g = torch.Generator().manual_seed(seed)
    return engine._descend(start, b, 40, 0.01, noise=noise, generator=g)[0].numpy()

  calm = descend(0.0, 1)
  assert np.allclose(calm, descend(0.0, 2))
  kicked = descend(atom_search.DESCENT_NOISE, 1)
  assert np.array_equal(kicked, descend(atom_search.DESCENT_NOISE, 1))
  assert not np.allclose(kicked, descend(atom_search.DESCENT_NOISE, 2), atol=1e-4)
  assert not np.allclose(kicked, calm, atol=1e-4)


def test_heavy_atoms_lead_the_layout():
  assert atom_search.heavy_atoms(("K", "Si", "Al", "O", "O", "O")) == 3
  assert atom_search.heavy_atoms(("Na", "C", "O", "O")) == 1
  # Organic cells (N, O beside C) and one element: no heavy atoms.
  assert atom_search.heavy_atoms(("O", "N", "C", "C")) == 0
  assert atom_search.heavy_atoms(("Fe", "Fe")) == 0


def test_fit_starts_from_given_sites_and_a_completion_keeps_heavy_atoms():
  xs = _structure()
  f_obs = abs(_f_obs(xs, 2.0))
  counts = {"Ca": 2, "S": 4, "O": 8}
  group = f_obs.space_group()
  layouts = atom_search.sample_layouts(counts, group, 32, seed=0)
  engine = atom_search.AtomSearch(f_obs, layouts.elements, layouts.occupancies[0])
  assert not layouts.rot[:, 0].any()  # Ca on an inversion centre: the origin
  layouts.trans[:, 0] = 0.0
  # Starting at the right sites with no step: R1 of the right structure.
  right = np.array([list(s.site) for s in xs.scatterers()])
  start = np.repeat(right[None], 32, 0)
  start[1:, 2:] = np.nan
  sites, b, r1, _ = engine.fit(rounds=1, steps=0, layouts=layouts, start=start)
  assert np.allclose(sites[1:, :2], right[:2], atol=1e-6)
  assert not np.allclose(sites[1:, 2:], right[2:], atol=1e-2)
  assert r1[0] < r1[1:].min()
  # The completion keeps the heavy atoms (Ca, S) of the best models, with
  # their special positions, and places O anew.
  sites, b, r1, layouts = engine.fit(rounds=2, steps=20, layouts=layouts, seed=2)
  more = atom_search._completion(engine, sites, b, r1, layouts, counts, group, 64, 0, 1, 0)
  new_sites, _, _, new_layouts = more
  assert atom_search.heavy_atoms(layouts.elements) == 2
  parents = np.argsort(r1)[:atom_search.COMPLETION_MODELS]
  for r in range(64):
    match = [p for p in parents if np.allclose(new_sites[r, :2], sites[p, :2] % 1.0, atol=1e-5)]
    assert match and np.allclose(new_layouts.trans[r, :2], layouts.trans[match[0], :2])


def test_structure_factors_agree_with_cctbx():
  xs = _structure()
  fc = _f_obs(xs, 1.2)
  f_obs = abs(fc)
  mult = [s.multiplicity() / 4.0 for s in xs.scatterers()]
  engine = atom_search.AtomSearch(f_obs, [s.scattering_type for s in xs.scatterers()], mult)
  import torch
  sites = torch.tensor([[list(s.site) for s in xs.scatterers()]], dtype=torch.float32)
  b = torch.tensor([8 * np.pi ** 2 * 0.01], dtype=torch.float32)
  a, s = engine.structure_factors(sites, b)
  ours = a[0].numpy() + 1j * s[0].numpy()
  theirs = fc.data().as_numpy_array()
  assert np.allclose(ours, theirs, atol=1e-3 * np.abs(theirs).max())
  assert float(engine.r1(sites, b)[0]) < 1e-4
  # Phases in degrees, as F_calc's (0 or 180 in this centrosymmetric group).
  assert np.allclose(np.cos(np.radians(engine.phases(sites.numpy(), b.numpy())[0])),
                     np.cos(np.angle(theirs)), atol=1e-3)


def test_the_search_finds_a_small_structure_at_2_angstrom_and_it_stands_out():
  xs = _structure()
  fc = _f_obs(xs, 2.0)
  f_obs = abs(fc).set_observation_type_xray_amplitude()
  counts = {"Ca": 2, "S": 4, "O": 8}
  models = atom_search.run(f_obs, counts, restarts=256, rounds=2, steps=200, seed=1)
  best = models[0]
  assert best.r1 < 0.02
  assert [m.r1 for m in models] == sorted(m.r1 for m in models)
  # Right phases: the sign correlation with F_calc's, best over the origins.
  std = symmetry.prepare(f_obs.crystal_symmetry())
  truth = benchmark.Truth(std, fc)
  assert truth.r(search.list_signs(std, f_obs, best.phases),
                 benchmark.measured_on_list(std, f_obs)) > 0.95
  assert atom_search.decisive([best.r1])


def test_atoms_of_unknown_element_find_the_structure_and_its_heavy_atoms():
  """No composition: 14 atoms per cell of unknown element (the true count
  of Ca2 S4 O8), each with its scattering fitted: the right model, with
  Ca (20 electrons, on an inversion centre) and S (16) weighing more than
  O (8)."""
  xs = _structure()
  fc = _f_obs(xs, 2.0)
  f_obs = abs(fc).set_observation_type_xray_amplitude()
  assert atom_search.contact_distance(atom_search.UNKNOWN, "O") == atom_search.MIN_CONTACT
  models = atom_search.run(f_obs, {atom_search.UNKNOWN: 14}, restarts=256, rounds=2,
                           steps=200, seed=1)
  best = models[0]
  assert best.r1 < 0.03
  std = symmetry.prepare(f_obs.crystal_symmetry())
  truth = benchmark.Truth(std, fc)
  assert truth.r(search.list_signs(std, f_obs, best.phases),
                 benchmark.measured_on_list(std, f_obs)) > 0.95
  assert set(best.elements) == {atom_search.UNKNOWN}
  # The weights fitted, carried as occupancies: per atom, occupancy over the
  # share of the cell's copies it stands for (1/2 on an inversion centre).
  special = np.array([not np.allclose(r, np.eye(3)) for r in best.rot])
  assert special.sum() == 1
  weight = best.occupancies / np.where(special, 0.5, 1.0)
  calcium, general = weight[special][0], np.sort(weight[~special])
  assert calcium > 1.5 * general[0] and general[-1] > 1.5 * general[0]
  lo, hi = np.exp(atom_search.UNKNOWN_LOG_WEIGHT)
  assert np.all(weight >= lo - 1e-6) and np.all(weight <= hi + 1e-6)
  # the model's own engine (its weights fixed as occupancies) gives its R1
  engine = atom_search.AtomSearch(f_obs, best.elements, best.occupancies)
  layouts = atom_search.Layouts(best.elements, best.occupancies[None], best.rot[None],
                                best.trans[None])
  import torch
  sites = torch.tensor(best.sites[None], dtype=torch.float32)
  r1 = engine.r1(sites, torch.tensor([best.b], dtype=torch.float32),
                 layout=engine.as_tensors(layouts))
  assert abs(float(r1[0]) - best.r1) < 2e-3
  with pytest.raises(ValueError):
    engine.fit(restarts=4)   # unknown atoms need layouts


def test_too_few_restarts_find_no_model_that_stands_out():
  """Wrong minima come in groups of nearly the same R1: one random placement
  per start, no rounds, does not give a decisive model."""
  xs = _structure()
  f_obs = abs(_f_obs(xs, 2.0))
  models = atom_search.run(f_obs, {"Ca": 2, "S": 4, "O": 8}, restarts=4, rounds=1,
                           steps=1, seed=0)
  assert min(m.r1 for m in models) > atom_search.DECISIVE_R1
  assert not atom_search.decisive(sorted(m.r1 for m in models))


def test_cross_validated_r1_confirms_a_right_model_and_not_a_wrong_one():
  xs = _structure()
  f_obs = abs(_f_obs(xs, 1.6))
  mult = [s.multiplicity() / 4.0 for s in xs.scatterers()]
  engine = atom_search.AtomSearch(f_obs, [s.scattering_type for s in xs.scatterers()], mult)
  right = np.array([[list(s.site) for s in xs.scatterers()]])
  b = np.array([8 * np.pi ** 2 * 0.01])
  free = engine.free_r1(right, b)[0]
  assert free < 0.02
  import torch
  r1 = float(engine.r1(torch.tensor(right, dtype=torch.float32),
                       torch.tensor(b, dtype=torch.float32))[0])
  assert atom_search.confirmed(r1, free)
  # Random sites predict reflections left out no better after refinement
  # against the others.
  free_wrong = engine.free_r1(np.random.default_rng(0).random((3, 4, 3)), np.repeat(b, 3))
  assert (free_wrong > 0.25).all()
  assert atom_search.confirmed(0.05, 0.12) and not atom_search.confirmed(0.04, 0.17)


def test_a_model_that_stands_out_is_solved_only_when_confirmed():
  """Its figure of merit: the "solved" level with a cross-validated R1
  that confirms it, "probably solved" without."""
  fc = _f_obs(_structure(), 2.0)
  for free, fom in ((0.08, search.DECISIVE_ATOM_FOM), (0.2, search.PROBABLE_ATOM_FOM)):
    c = search.Candidate(label="atom model 1", method="atom_search", start="random atoms",
                         phases=fc.phases(deg=True), signs=np.zeros(1205),
                         terms={"r1": 0.9, "skewness": 0.0, "held_out_cc": 0.0,
                                "model_r1": 0.05, "model_free_r1": free, "decisive": 1.0})
    search.assess([c], problem=None, amplitudes=np.ones(1205))
    assert c.fom == fom


def test_decisive():
  assert atom_search.decisive([0.02])
  assert atom_search.decisive([0.02, 0.06])
  assert not atom_search.decisive([0.05, 0.06])
  assert not atom_search.decisive([0.11])
  assert not atom_search.decisive([])


def test_clear():
  # COD 2016452 at 2.0 A (measured): R1 0.094 against 0.156, cross-validated
  # 0.187 against 0.265-0.346: clear, where decisive() is not
  r1, free = [0.094, 0.156, 0.165, 0.165], [0.187, 0.285, 0.265, 0.346]
  assert not atom_search.decisive(r1) and atom_search.clear(r1, free)
  # Cryolite at 2.0 A (wrong): the solutions' R1 within 3 %
  assert not atom_search.clear([0.105, 0.108, 0.108], [0.219, 0.252, 0.225])
  # a gap in R1, none in the cross-validated R1
  assert not atom_search.clear([0.10, 0.15], [0.20, 0.22])
  # not confirmed: the cross-validated R1 exceeds R1 by 0.10 or more
  assert not atom_search.clear([0.10, 0.15], [0.21, 0.40])
  # one solution only, or the R1s without theirs: decisive() decides
  assert not atom_search.clear([0.094], [0.187])
  assert not atom_search.clear(r1, free[:1])


def test_cell_counts():
  p21c = sgtbx.space_group_info("P 1 21/c 1").group()
  cell = Composition(("C", "H", "O"), {"C": 8, "H": 16, "O": 4}, per_cell=True)
  assert atom_search.cell_counts(cell)[0] == {"C": 8, "H": 16, "O": 4}
  formula = parse_elements("C2 H4 O")
  assert atom_search.cell_counts(formula, z=4)[0] == {"C": 8, "H": 16, "O": 4}
  counts, how = atom_search.cell_counts(formula, space_group=p21c)
  assert counts == {"C": 8, "H": 16, "O": 4} and "Z not given" in how
  # with the cell, Z from its volume: 3 heavy atoms in 204 A^3 -> Z = 4;
  # in half that volume -> Z = 2 (a molecule on an inversion centre)
  counts, how = atom_search.cell_counts(formula, space_group=p21c,
                                        unit_cell=uctbx.unit_cell((6, 6, 5.67, 90, 90, 90)))
  assert counts == {"C": 8, "H": 16, "O": 4} and "estimated from the cell volume" in how
  counts, how = atom_search.cell_counts(formula, space_group=p21c,
                                        unit_cell=uctbx.unit_cell((6, 6, 2.83, 90, 90, 90)))
  assert counts == {"C": 4, "H": 8, "O": 2} and "Z = 2" in how
  # a given Z wins; an inorganic formula keeps one unit per asymmetric unit
  assert atom_search.cell_counts(formula, z=8, space_group=p21c, unit_cell=uctbx.unit_cell(
    (6, 6, 2.83, 90, 90, 90)))[0] == {"C": 16, "H": 32, "O": 8}
  # an inorganic formula: Z from the volume too, where the atoms fill whole
  # positions (one Na per cell of P2_1/c does not) ...
  counts, how = atom_search.cell_counts(parse_elements("Na C O3"), space_group=p21c,
                                        unit_cell=uctbx.unit_cell((6, 6, 2.83, 90, 90, 90)))
  assert counts == {"Na": 2, "C": 2, "O": 6} and "Z = 2" in how and "then" not in how
  # ... and where two Z are plausible, both, the likelier first
  choices, how = atom_search.cell_count_choices(
    parse_elements("Si O2"), space_group=p21c, unit_cell=uctbx.unit_cell((5, 5, 6, 90, 90, 90)))
  assert choices == [{"Si": 4, "O": 8}, {"Si": 2, "O": 4}]
  assert "Z = 4" in how and "then Z = 2 where no model stands out" in how
  # without the cell: one formula unit in the asymmetric unit
  counts, how = atom_search.cell_counts(parse_elements("Na C O3"), space_group=p21c)
  assert counts == {"Na": 4, "C": 4, "O": 12} and "one formula unit" in how
  assert atom_search.cell_counts(parse_elements("C H O"))[0] is None
  assert atom_search.cell_counts(None)[0] is None


def test_the_search_runs_the_atom_stage_only_with_a_composition():
  xs = _structure()
  f_obs = abs(_f_obs(xs, 2.0)).set_observation_type_xray_amplitude()
  settings = search.SearchSettings(method="dual_space")
  assert search.atom_search_atoms(settings, f_obs, None) is None
  assert search.atom_search_atoms(settings, f_obs, {"Ca": 2, "S": 4, "O": 8})[0] == (
    "Ca", "S", "O", "O")
  for off in (dict(atom_search=False), dict(method="network"), dict(atom_restarts=0)):
    assert search.atom_search_atoms(
      search.SearchSettings(**dict(dict(method="dual_space"), **off)), f_obs,
      {"Ca": 2, "S": 4, "O": 8}) is None


@pytest.mark.skipif(not os.path.isfile(NAHCOLITE), reason="shared structures not present")
def test_nahcolite_at_2_angstrom_is_solved_by_the_atom_search():
  """Real data where the atom search decides: NaHCO3 (P2_1/c, 5 atoms
  heavier than hydrogen) at 2.0 A, 31 unique reflections.  Without the
  composition the search ends at r < 0.95 (its held-out correlation prefers
  a wrong map); with it a model of R1 about 0.01 stands out, is chosen and
  called solved."""
  from phai_cctbx import solve
  xs = benchmark.read_structure(NAHCOLITE)
  f_calc = benchmark.structure_factors(xs, 2.0)
  f_obs = f_calc.as_amplitude_array()
  counts = benchmark.cell_composition(xs, f_obs)
  assert {k: round(v) for k, v in counts.items()} == {"Na": 4, "C": 4, "O": 12}

  def r_of(result):
    std = result.standardisation
    return benchmark.Truth(std, f_calc).r(
      search.list_signs(std, result.f_obs, result.phases),
      benchmark.measured_on_list(std, f_obs))

  log = io.StringIO()
  with_atoms = solve.solve(f_obs, method="dual_space", composition=counts, log=log)
  assert with_atoms.chosen.method == "atom_search" and with_atoms.chosen.terms["decisive"]
  assert r_of(with_atoms) > 0.95 and with_atoms.verdict == "solved"
  assert "atom search (5 atoms: Na O O O C" in log.getvalue()
  # Without the composition and without the guess (an organic cell of
  # carbon atoms, which finds Na, C and O here too) dual-space phasing alone
  # does not solve it.
  assert r_of(solve.solve(f_obs, method="dual_space", log=io.StringIO(),
                          guess_composition=False)) < 0.95


XULDUD01 = os.path.join(os.path.dirname(NAHCOLITE), "MaterSim_test_XULDUD01.cif")


def test_peak_starts_take_the_highest_peaks_and_leave_some_to_chance():
  rng = np.random.default_rng(0)
  peaks = rng.random((10, 3))
  start = atom_search.peak_starts(peaks, 6, 200, rng)
  assert start.shape == (200, 6, 3)
  assert np.array_equal(start[0], peaks[:6])   # the first: the six highest as they are
  rest = start[1:]
  drawn = ~np.isnan(rest[..., 0])
  # The others: shifted peaks among the highest 6 + 3, a share left to chance.
  for r, a in zip(*np.nonzero(drawn)):
    d = np.abs(peaks[:9] - rest[r, a])
    assert d.max(1).min() < 6 * atom_search.PEAK_SHIFT
  assert 0.05 < 1 - drawn.mean() < 0.3
  # Fewer peaks than atoms: the rest at random.
  few = atom_search.peak_starts(peaks[:4], 6, 8, rng)
  assert np.isnan(few[0, 4:]).all() and not np.isnan(few[0, :4]).any()


@pytest.mark.skipif(not os.path.isfile(XULDUD01), reason="shared structures not present")
def test_a_search_from_map_peaks_finishes_a_partial_model():
  """XULDUD01 (C6 O per asymmetric unit, P2_1/c) at 2.0 A: started from its
  seven atoms (heaviest first, each about 0.3 A off) followed by three
  spurious peaks, the search refines the right model; the random search of
  the same size does not find it."""
  xs = benchmark.read_structure(XULDUD01)
  f_calc = benchmark.structure_factors(xs, 2.0)
  f_obs = f_calc.as_amplitude_array()
  counts = benchmark.cell_composition(xs, f_obs)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  truth = benchmark.Truth(std, f_calc)

  def r_of(phases):
    return truth.r(search.list_signs(std, f_obs, phases), benchmark.measured_on_list(std, f_obs))

  atoms = sorted((s for s in xs.scatterers() if s.scattering_type != "H"),
                 key=lambda s: -atom_search._scattering_weight(s.scattering_type))
  rng = np.random.default_rng(0)
  right = np.array([s.site for s in atoms])
  peaks = np.concatenate([right + rng.normal(0.0, 0.03, right.shape), rng.random((3, 3))])
  models = atom_search.from_peaks(f_obs, counts, [peaks], restarts=32, rounds=2, seed=0)
  assert len(models) == 16 and [m.r1 for m in models] == sorted(m.r1 for m in models)
  assert r_of(models[0].phases) > 0.95
  assert r_of(atom_search.run(f_obs, counts, restarts=32, rounds=2, seed=0)[0].phases) < 0.95
  # Nothing to start from, or no atom to place: no model.
  assert atom_search.from_peaks(f_obs, counts, []) == []
  assert atom_search.from_peaks(f_obs, {"H": 8}, [peaks]) == []


@pytest.mark.skipif(not os.path.isfile(XULDUD01), reason="shared structures not present")
def test_the_peak_stage_turns_maps_into_atom_model_candidates():
  """search._peak_candidates: the peaks of the true map give models that are
  candidates like those of the random search, the best right; the stage
  runs below atomic resolution only, and not when switched off."""
  xs = benchmark.read_structure(XULDUD01)
  f_calc = benchmark.structure_factors(xs, 2.0)
  f_obs = f_calc.as_amplitude_array()
  counts = benchmark.cell_composition(xs, f_obs)
  std = symmetry.prepare(f_obs.crystal_symmetry())
  weights = np.ones(1205)
  source = search.Candidate(label="dual-space random 1", method="dual_space", start="random",
                            phases=f_calc.phases(deg=True),
                            signs=search.list_signs(std, f_obs, f_calc.phases(deg=True)))
  peaks = search.peak_sites(f_obs, source.phases, 14)
  assert 7 <= len(peaks) <= 14
  s = search.SearchSettings()
  found = search._peak_candidates(f_obs, counts, [source], std, weights, s)
  assert found and all(c.method == "atom_search" and c.start == "map peaks" for c in found)
  assert found[0].label.startswith("peak atom model 1 (R1")
  assert [c.terms["model_r1"] for c in found] == sorted(c.terms["model_r1"] for c in found)
  truth = benchmark.Truth(std, f_calc)
  assert truth.r(found[0].signs, benchmark.measured_on_list(std, f_obs)) > 0.95
  assert search.runs_peak_search(s, f_obs)
  assert not search.runs_peak_search(search.SearchSettings(peak_maps=0), f_obs)
  assert not search.runs_peak_search(search.SearchSettings(method="network"), f_obs)
  assert not search.runs_peak_search(s, benchmark.structure_factors(xs, 1.0).as_amplitude_array())


@pytest.mark.skipif(not os.path.isfile(XULDUD01), reason="shared structures not present")
def test_the_refinement_stages_run_past_the_time_limit_while_nothing_is_solved():
  """With the composition given and the time limit spent after the first
  stage, nothing called solved: omit maps and the atom search from map
  peaks still end the search, each switched off by its own setting; each
  round of the peak search after the first starts from the models of the
  round before, four rounds by default."""
  from phai_cctbx import solve
  xs = benchmark.read_structure(XULDUD01)
  f_obs = benchmark.structure_factors(xs, 2.0).as_amplitude_array()
  counts = benchmark.cell_composition(xs, f_obs)
  log = io.StringIO()
  result = solve.solve(f_obs, method="dual_space", composition=counts, time_limit=1e-3,
                       dual_space_starts=4, peak_maps=1, peak_rounds=1, omit_refinement=1,
                       log=log)
  stages = result.search.stages
  assert stages[0] == "dual-space from random phases" and "atom search (7 atoms)" not in stages
  assert stages[-2:] == ["omit-map refinement (1)", "atom search from the peaks of 1 map"]
  assert "atom searches from the peaks of the best map" in log.getvalue()
  assert any(c.label.startswith("peak atom model 1") for c in result.search.candidates)
  none = solve.solve(f_obs, method="dual_space", composition=counts, time_limit=1e-3,
                     dual_space_starts=4, peak_maps=0, omit_refinement=1, log=io.StringIO())
  assert none.search.stages[-1] == "omit-map refinement (1)"
  # Not allowed to stop early, the search runs all its rounds (four by
  # default), each from the models of the round before; the later rounds'
  # models are labelled with their round.
  log = io.StringIO()
  rounds = solve.solve(f_obs, method="dual_space", composition=counts, time_limit=1e-3,
                       dual_space_starts=4, peak_maps=1, omit_refinement=0,
                       stop_early=False, log=log)
  assert rounds.search.stages[-4:] == ["atom search from the peaks of 1 map"] + [
    "atom search from the peaks of 1 map of peak models (round %d)" % k for k in (2, 3, 4)]
  assert "the best map (4 rounds)" in log.getvalue()
  labels = [c.label for c in rounds.search.candidates]
  assert any(l.startswith("peak atom model 1 (R1") for l in labels)
  assert all(any(l.startswith("peak atom model 1 (round %d, R1" % k) for l in labels)
             for k in (2, 3, 4))
  later = [c for c in rounds.search.candidates if "(round 3," in c.label]
  assert later and all(c.start == "map peaks" for c in later)
  two = solve.solve(f_obs, method="dual_space", composition=counts, time_limit=1e-3,
                    dual_space_starts=4, peak_maps=1, peak_rounds=2, omit_refinement=0,
                    stop_early=False, log=io.StringIO())
  assert two.search.stages[-2:] == ["atom search from the peaks of 1 map",
                                    "atom search from the peaks of 1 map of peak models (round 2)"]
  assert not any("(round 3" in c.label for c in two.search.candidates)


UCECAG01 = os.path.join(os.path.dirname(NAHCOLITE), "..", "p21c_large", "MaterSim_mech_UCECAG01.cif")


def test_peak_atom_limit_follows_the_reflections_per_atom():
  organic = {"C": 48, "N": 24, "O": 32, "Cl": 8, "H": 32}
  assert atom_search.peak_atom_limit(organic, 415) == 415 // atom_search.PEAK_REFLECTIONS_PER_ATOM
  assert atom_search.peak_atom_limit(organic, 100) == atom_search.MAX_MOLECULAR_ATOMS
  # ... from the guessed limit, the one the searches reach surely.
  assert atom_search.peak_atom_limit(organic, 100, guessed=True) == \
    atom_search.SURE_MOLECULAR_ATOMS < atom_search.MAX_MOLECULAR_ATOMS
  assert atom_search.peak_atom_limit(organic, 415, guessed=True) == \
    415 // atom_search.PEAK_REFLECTIONS_PER_ATOM
  assert atom_search.peak_atom_limit(organic, 5000) == atom_search.PEAK_MAX_ATOMS
  # An inorganic composition: the same reflections per atom, and never
  # fewer than the limit of free atoms ...
  brochantite = {"Cu": 16, "S": 4, "O": 40}
  assert atom_search.peak_atom_limit(brochantite, 5000) == atom_search.PEAK_MAX_ATOMS
  assert atom_search.peak_atom_limit(brochantite, 96) == atom_search.MAX_ATOMS
  # ... and where the heavy atoms are searched for first, their maps giving
  # the peaks: one atom per HEAVY_PEAK_REFLECTIONS_PER_ATOM reflections.
  p21c = sgtbx.space_group_info("P 1 21/c 1").group()
  assert atom_search.peak_atom_limit(brochantite, 5000, p21c) == atom_search.PEAK_MAX_ATOMS
  assert atom_search.peak_atom_limit(brochantite, 96, p21c) == \
    96 // atom_search.HEAVY_PEAK_REFLECTIONS_PER_ATOM
  assert atom_search.peak_atom_limit(brochantite, 30, p21c) == atom_search.MAX_ATOMS
  # Kernite (Na, O beside B): no heavy atoms searched first; its 17 atoms
  # per asymmetric unit from 204 reflections on (1.6 A: 248), not from 127 (2.0 A).
  kernite = {"Na": 8, "O": 44, "B": 16}
  assert atom_search.heavy_counts(kernite, p21c) is None
  assert atom_search.peak_atom_limit(kernite, 248, p21c) == 248 // 12 >= 17
  assert atom_search.peak_atom_limit(kernite, 127, p21c) == atom_search.MAX_ATOMS < 17
  # Heavy atoms of unknown element beside carbon (a guess): their maps give
  # the peaks, so the same limit; atoms of unknown element alone: the free one.
  guess = {atom_search.UNKNOWN: 4, "C": 56}
  assert atom_search.heavy_unknown(guess)
  assert not atom_search.heavy_unknown({atom_search.UNKNOWN: 56})
  assert not atom_search.heavy_unknown({"C": 56, "H": 40})
  assert atom_search.peak_atom_limit(guess, 120) == atom_search.heavy_peak_limit(120) == 20
  assert atom_search.peak_atom_limit({atom_search.UNKNOWN: 56}, 120) == atom_search.MAX_ATOMS
  assert atom_search.heavy_peak_limit(5000) == atom_search.PEAK_MAX_ATOMS


def test_heavy_counts_are_the_few_atoms_that_scatter_most():
  p21c = sgtbx.space_group_info("P 1 21/c 1").group()
  # The measured water set's cell: Mn on an inversion centre, S (1.5 atoms
  # of the asymmetric unit, 45 % of its sum of f0^2).
  water = {"C": 28, "H": 40, "Mn": 2, "N": 4, "O": 24, "S": 4}
  assert atom_search.heavy_counts(water, p21c) == {"Mn": 2, "S": 4}
  # Ru, Cl and P are heavy beside C, 7 atoms in all: the heaviest that keep
  # within HEAVY_SEARCH_MAX_ATOMS (Ru and Cl, 5).
  assert atom_search.heavy_counts({"Ru": 4, "Cl": 16, "P": 8, "C": 128}, p21c) == \
    {"Ru": 4, "Cl": 16}
  # One Fe among 80 C scatters too little of the cell (a fifth), among 40
  # enough (a third).
  assert atom_search.heavy_counts({"Fe": 4, "C": 320, "H": 320}, p21c) is None
  assert atom_search.heavy_counts({"Fe": 4, "C": 160, "H": 160}, p21c) == {"Fe": 4}
  # A molecular crystal (Cl among C, N, O; UCECAG01): not searched this way.
  assert atom_search.heavy_counts({"Cl": 8, "O": 32, "N": 24, "C": 48}, p21c) is None
  # Nothing heavy beside C, N, O; one element alone; too many heavy atoms.
  assert atom_search.heavy_counts({"C": 80, "N": 8, "O": 16}, p21c) is None
  assert atom_search.heavy_counts({"Fe": 8}, p21c) is None
  assert atom_search.heavy_counts({"Na": 8, "O": 44, "B": 16}, p21c) is None
  assert atom_search.HEAVY_SEARCH_MAX_ATOMS < 13


@pytest.mark.skipif(not os.path.isfile(UCECAG01), reason="shared structures not present")
def test_the_peak_search_places_larger_molecules_where_the_data_allow_it():
  """UCECAG01 (28 atoms heavier than hydrogen per asymmetric unit, beyond
  the random search's 16): at 1.6 A (15 reflections per atom) the peak
  stage places all 28, and from the peaks of the true map reaches the
  right model; at 2.0 A (7 per atom), for a guessed composition or with
  the atom search off it does not run."""
  xs = benchmark.read_structure(UCECAG01)
  f_calc = benchmark.structure_factors(xs, 1.6)
  f_obs = f_calc.as_amplitude_array()
  counts = benchmark.cell_composition(xs, f_obs)
  s = search.SearchSettings()
  assert search.atom_search_atoms(s, f_obs, counts) is None
  assert len(search.peak_search_atoms(s, f_obs, counts)[0]) == 28
  low = benchmark.structure_factors(xs, 2.0).as_amplitude_array()
  assert search.peak_search_atoms(s, low, counts) is None
  assert search.peak_search_atoms(search.SearchSettings(composition_guessed=True), f_obs,
                                  counts) is None
  assert search.peak_search_atoms(search.SearchSettings(atom_search=False), f_obs, counts) is None
  std = symmetry.prepare(f_obs.crystal_symmetry())
  truth = benchmark.Truth(std, f_calc)
  peaks = search.peak_sites(f_obs, f_calc.phases(deg=True), 56)
  models = atom_search.from_peaks(f_obs, counts, [peaks], restarts=4, rounds=1, steps=100)
  assert models and len(models[0].sites) == 28
  assert truth.r(search.list_signs(std, f_obs, models[0].phases),
                 benchmark.measured_on_list(std, f_obs)) > 0.95


def test_a_pseudo_translation_of_a_model_is_found():
  """Atoms at y = 1/4 in P2_1/c repeat under (0, 0, 1/2) (the c-glide
  moves them by c/2 alone); at general y they do not, and a translation of
  the group's own (a centred cell's) is not reported."""
  cell = uctbx.unit_cell((7.0, 8.0, 9.0, 90, 100, 90))

  def model(y, group="P 1 21/c 1"):
    return atom_search.AtomModel(
      elements=("Pb", "Cu", "O"), occupancies=np.ones(3),
      sites=np.array([[0.1, y, 0.2], [0.35, y + 0.02, 0.6], [0.7, 0.05, 0.4]]),
      b=2.0, r1=0.2, phases=None)

  p21c = sgtbx.space_group_info("P 1 21/c 1").group()
  assert atom_search.pseudo_translation(model(0.25), cell, p21c) == (0.0, 0.0, 0.5)
  assert atom_search.pseudo_translation(model(0.13), cell, p21c) is None
  # C2/c: the atoms repeat under (1/2, 1/2, 0), the group's own centring.
  c2c = sgtbx.space_group_info("C 1 2/c 1").group()
  assert atom_search.pseudo_translation(model(0.13), cell, c2c) is None


def test_atoms_of_unknown_element_get_two_rounds_of_the_peak_search():
  """A composition mostly of atoms of unknown element, whose fitted
  scattering lets wrong models fit, stops after two rounds of the search
  from map peaks, even where more are asked for; carbon beside a heavy
  atom of unknown element does not."""
  from phai_cctbx import solve
  p21c = sgtbx.space_group_info("P 1 21/c 1").group()
  mostly = lambda counts: atom_search.mostly_unknown(
    atom_search.asymmetric_unit_atoms(counts, p21c)[0])
  assert mostly({atom_search.UNKNOWN: 28})
  assert not mostly({atom_search.UNKNOWN: 4, "C": 24, "H": 40})
  assert mostly({atom_search.UNKNOWN: 8, "C": 12})
  assert not mostly({"C": 28})
  xs = benchmark.read_structure(XULDUD01)
  f_obs = benchmark.structure_factors(xs, 2.0).as_amplitude_array()
  result = solve.solve(f_obs, method="dual_space", composition={atom_search.UNKNOWN: 28},
                       time_limit=1e-3, dual_space_starts=4, peak_maps=1, omit_refinement=0,
                       stop_early=False, log=io.StringIO())
  peak_stages = [s for s in result.search.stages if s.startswith("atom search from the peaks")]
  assert peak_stages == ["atom search from the peaks of 1 map",
                         "atom search from the peaks of 1 map of peak models (round 2)"]
