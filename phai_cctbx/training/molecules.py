"""A cached library of small organic (and some metal-organic) molecule conformers.

Random molecular graphs of up to ~13 non-hydrogen atoms are grown with valence
rules from single atoms and common fragments (aromatic and saturated rings,
carbonyl, amide, acid, nitrile, nitro, sulfonyl groups, halides), closed into
5- and 6-membered rings now and then, sanitised, given hydrogens, embedded in
3D (ETKDG) and optimised with MMFF.  Failures are dropped and duplicates
(by canonical SMILES) removed.  A share of the entries carry one metal atom at
a coordination distance from an O or N donor.

RDKit is needed only to build a library; `ConformerLibrary.load` needs numpy
alone, so training processes never import RDKit.

Command line:  python -m phai_cctbx.training.molecules --out lib.npz --count N --seed S
"""
import argparse
import time
from dataclasses import dataclass

import numpy as np

#: Maximum number of non-hydrogen atoms of a generated organic molecule.
MAX_HEAVY = 13

#: Metals of the metal-organic entries: (atomic number, symbol, min and max
#: metal-donor distance in Angstrom).
METALS = (
  (3, "Li", 1.90, 2.10), (11, "Na", 2.30, 2.50), (12, "Mg", 2.00, 2.15),
  (19, "K", 2.65, 2.90), (20, "Ca", 2.30, 2.45), (25, "Mn", 2.05, 2.25),
  (26, "Fe", 1.95, 2.20), (27, "Co", 1.95, 2.15), (28, "Ni", 1.95, 2.10),
  (29, "Cu", 1.90, 2.05), (30, "Zn", 1.95, 2.15), (48, "Cd", 2.20, 2.40),
  (47, "Ag", 2.10, 2.40),
)

# Elements added one at a time while growing: atomic number, valence, weight.
_GROW_ATOMS = ((6, 4, 0.62), (7, 3, 0.14), (8, 2, 0.14), (9, 1, 0.025),
               (17, 1, 0.025), (35, 1, 0.012), (16, 2, 0.028))

# Fragments added as a unit.  A "*" marks the atom that bonds to the growing
# molecule; without one, any atom bearing hydrogen may bond.
_FRAGMENTS = (
  ("c1ccccc1", 3.0), ("c1ccncc1", 1.0), ("c1ccoc1", 0.6), ("c1ccsc1", 0.5),
  ("c1cc[nH]c1", 0.5), ("c1cnc[nH]1", 0.3), ("c1cncnc1", 0.3),
  ("c1ccon1", 0.2), ("c1cscn1", 0.2),
  ("C1CCCCC1", 0.8), ("C1CCCC1", 0.6), ("C1CCOC1", 0.3), ("C1CCNCC1", 0.4),
  ("C1COCCN1", 0.3), ("C1CC1", 0.2), ("O=C1CCCN1", 0.3), ("O=C1C=CC(=O)C=C1", 0.1),
  ("*C(=O)O", 1.2), ("*C(=O)N", 0.8), ("*C(=O)C", 0.5), ("*C(=O)OC", 0.5),
  ("*OC(=O)C", 0.3), ("*NC(=O)C", 0.5), ("*C#N", 0.6), ("*[N+](=O)[O-]", 0.5),
  ("*S(=O)(=O)N", 0.3), ("*S(=O)(=O)C", 0.2), ("*C(F)(F)F", 0.3),
  ("*NC(=O)N", 0.2), ("*C=O", 0.4), ("*OC", 0.5), ("*N(C)C", 0.3),
)

_HALOGENS = (9, 17, 35, 53)


@dataclass
class ConformerLibrary:
  """Concatenated conformers of many molecules.

  coords   (n_atoms, 3) float32  Cartesian coordinates in Angstrom, each
                                 molecule centred on the mean of its atoms
  numbers  (n_atoms,) int8       atomic numbers
  parents  (n_atoms,) int16      for a hydrogen: index (within its molecule)
                                 of the heavy atom it is bonded to; -1 for
                                 non-hydrogen atoms
  offsets  (n_mol + 1,) int64    molecule i is atoms offsets[i]:offsets[i+1]
  smiles   (n_mol,) str          canonical SMILES (".[M]" appended for a metal)
  """
  coords: np.ndarray
  numbers: np.ndarray
  parents: np.ndarray
  offsets: np.ndarray
  smiles: np.ndarray

  def __len__(self):
    return len(self.offsets) - 1

  def molecule(self, i):
    """(coords, numbers, parents) of molecule i."""
    lo, hi = self.offsets[i], self.offsets[i + 1]
    return self.coords[lo:hi], self.numbers[lo:hi], self.parents[lo:hi]

  def heavy_counts(self):
    """Number of non-hydrogen atoms of each molecule."""
    heavy = (self.numbers != 1).astype(np.int64)
    return np.add.reduceat(heavy, self.offsets[:-1])

  def save(self, path):
    np.savez_compressed(
      path, coords=self.coords, numbers=self.numbers, parents=self.parents,
      offsets=self.offsets, smiles=np.asarray(self.smiles, dtype=str))

  @classmethod
  def load(cls, path):
    with np.load(path, allow_pickle=False) as z:
      return cls(coords=z["coords"].astype(np.float32),
                 numbers=z["numbers"].astype(np.int8),
                 parents=z["parents"].astype(np.int16),
                 offsets=z["offsets"].astype(np.int64),
                 smiles=z["smiles"])

  @classmethod
  def from_entries(cls, entries):
    """Library from a list of (smiles, coords, numbers, parents)."""
    sizes = [len(e[2]) for e in entries]
    offsets = np.zeros(len(entries) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(sizes)
    if entries:
      coords = np.concatenate([e[1] for e in entries]).astype(np.float32)
      numbers = np.concatenate([e[2] for e in entries]).astype(np.int8)
      parents = np.concatenate([e[3] for e in entries]).astype(np.int16)
    else:
      coords = np.zeros((0, 3), np.float32)
      numbers = np.zeros(0, np.int8)
      parents = np.zeros(0, np.int16)
    smiles = np.asarray([e[0] for e in entries], dtype=str)
    return cls(coords, numbers, parents, offsets, smiles)


# ---------------------------------------------------------------- graph growth

class _Graph:
  """A molecular graph under construction in Kekule form.

  z: atomic numbers; charge: formal charges; cap: bond-order sum each atom may
  reach (the rest of it becomes hydrogens); aromatic: atom came from an
  aromatic fragment; bonds: dict (i, j) with i < j -> bond order.
  """

  def __init__(self):
    self.z, self.charge, self.cap, self.aromatic = [], [], [], []
    self.bonds = {}
    self.used = []

  def __len__(self):
    return len(self.z)

  def add_atom(self, z, cap, charge=0, aromatic=False):
    self.z.append(z)
    self.cap.append(cap)
    self.charge.append(charge)
    self.aromatic.append(aromatic)
    self.used.append(0)
    return len(self.z) - 1

  def add_bond(self, i, j, order):
    self.bonds[(min(i, j), max(i, j))] = order
    self.used[i] += order
    self.used[j] += order

  def free(self, i):
    return self.cap[i] - self.used[i]

  def neighbours(self, i):
    return [b if a == i else a for (a, b) in self.bonds if i in (a, b)]

  def has_multiple_bond(self, i):
    return any(o > 1 for (a, b), o in self.bonds.items() if i in (a, b))

  def distances_from(self, i):
    """Topological distances from atom i (dict)."""
    adj = {k: [] for k in range(len(self))}
    for a, b in self.bonds:
      adj[a].append(b)
      adj[b].append(a)
    dist, front = {i: 0}, [i]
    while front:
      nxt = []
      for a in front:
        for b in adj[a]:
          if b not in dist:
            dist[b] = dist[a] + 1
            nxt.append(b)
      front = nxt
    return dist


def _fragment_table():
  """Parsed fragments: list of (z, charge, cap, aromatic, bonds, anchor, weight)."""
  from rdkit import Chem
  table = []
  for smi, weight in _FRAGMENTS:
    mol = Chem.MolFromSmiles(smi)
    anchor = None
    dummies = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() == 0]
    if dummies:
      anchor = mol.GetAtomWithIdx(dummies[0]).GetNeighbors()[0].GetIdx()
    Chem.Kekulize(mol, clearAromaticFlags=False)
    keep = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() != 0]
    index = {old: new for new, old in enumerate(keep)}
    z, charge, cap, arom = [], [], [], []
    for old in keep:
      a = mol.GetAtomWithIdx(old)
      valence = sum(int(b.GetBondTypeAsDouble()) for b in a.GetBonds()
                    if b.GetOtherAtom(a).GetAtomicNum() != 0)
      extra = 1 if old == anchor else 0
      z.append(a.GetAtomicNum())
      charge.append(a.GetFormalCharge())
      cap.append(valence + a.GetTotalNumHs() + extra)
      arom.append(a.GetIsAromatic())
    bonds = []
    for b in mol.GetBonds():
      i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
      if i in index and j in index:
        bonds.append((index[i], index[j], int(b.GetBondTypeAsDouble())))
    table.append((z, charge, cap, arom, bonds,
                  None if anchor is None else index[anchor], weight))
  return table


def _grow_graph(rng, n_target, fragments, frag_weights):
  """Grows a random graph of about n_target non-hydrogen atoms."""
  g = _Graph()
  grow_z = np.array([a[0] for a in _GROW_ATOMS])
  grow_cap = {a[0]: a[1] for a in _GROW_ATOMS}
  grow_w = np.array([a[2] for a in _GROW_ATOMS])
  grow_w = grow_w / grow_w.sum()

  def place_fragment(k, attach_to):
    z, charge, cap, arom, bonds, anchor, _ = fragments[k]
    if attach_to is not None:
      sites = [anchor] if anchor is not None else [
        s for s in range(len(z))
        if cap[s] - sum(o for a, b, o in bonds if s in (a, b)) > 0]
      if not sites:
        return False
      site = sites[rng.integers(len(sites))]
      if g.z[attach_to] != 6 and z[site] != 6:
        return False
    base = len(g)
    for s in range(len(z)):
      g.add_atom(z[s], cap[s], charge[s], arom[s])
    for a, b, o in bonds:
      g.add_bond(base + a, base + b, o)
    if attach_to is not None:
      g.add_bond(attach_to, base + site, 1)
    elif anchor is not None:
      g.add_bond(base + anchor, g.add_atom(6, 4), 1)
    return True

  if rng.random() < 0.45:
    sizes = np.array([len(f[0]) for f in fragments])
    ok = sizes <= n_target
    w = frag_weights * ok
    place_fragment(rng.choice(len(fragments), p=w / w.sum()), None)
  else:
    z0 = grow_z[rng.choice(len(grow_z), p=grow_w)]
    if z0 in _HALOGENS:
      z0 = 6
    g.add_atom(int(z0), grow_cap[int(z0)])

  tries = 0
  while len(g) < n_target and tries < 60:
    tries += 1
    open_sites = [i for i in range(len(g)) if g.free(i) > 0]
    if not open_sites:
      break
    u = rng.random()
    remaining = n_target - len(g)
    if u < 0.13 and len(g) >= 5:
      # ring closure to a 5- or 6-membered ring
      cand = [i for i in open_sites if not g.aromatic[i] and g.z[i] not in _HALOGENS]
      if len(cand) < 2:
        continue
      i = cand[rng.integers(len(cand))]
      dist = g.distances_from(i)
      partners = [j for j in cand if dist.get(j) in (4, 5)]
      if not partners:
        continue
      j = partners[rng.integers(len(partners))]
      if g.z[i] != 6 and g.z[j] != 6:
        continue
      g.add_bond(i, j, 1)
      continue
    if u < 0.40:
      sizes = np.array([len(f[0]) for f in fragments])
      ok = sizes <= remaining
      if not ok.any():
        continue
      w = frag_weights * ok
      k = rng.choice(len(fragments), p=w / w.sum())
      place_fragment(k, open_sites[rng.integers(len(open_sites))])
      continue
    i = open_sites[rng.integers(len(open_sites))]
    z = int(grow_z[rng.choice(len(grow_z), p=grow_w)])
    if z in _HALOGENS and g.z[i] != 6:
      continue
    if z != 6 and g.z[i] != 6 and not (z != 8 or g.z[i] != 8):
      continue
    if z != 6 and g.z[i] != 6 and rng.random() > 0.08:
      continue
    order = 1
    fi, fz = g.free(i), grow_cap[z]
    if not g.aromatic[i] and not g.has_multiple_bond(i) and z in (6, 7, 8, 16):
      v = rng.random()
      if v < 0.06 and fi >= 3 and fz >= 3 and z in (6, 7) and g.z[i] == 6:
        order = 3
      elif v < 0.30 and fi >= 2 and fz >= 2 and not (z == 16 and g.z[i] != 6):
        order = 2
    j = g.add_atom(z, fz)
    g.add_bond(i, j, order)
  return g


def _graph_to_mol(g):
  """RDKit molecule of a graph (hydrogens implicit), sanitised; None on failure."""
  from rdkit import Chem
  orders = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
  rw = Chem.RWMol()
  for k in range(len(g)):
    a = Chem.Atom(int(g.z[k]))
    a.SetFormalCharge(int(g.charge[k]))
    a.SetNumExplicitHs(int(max(g.free(k), 0)))
    a.SetNoImplicit(True)
    rw.AddAtom(a)
  for (i, j), o in g.bonds.items():
    rw.AddBond(int(i), int(j), orders[o])
  mol = rw.GetMol()
  try:
    Chem.SanitizeMol(mol)
  except Exception:
    return None
  if Chem.GetFormalCharge(mol) != 0:
    return None
  return mol


def _embed(mol, seed):
  """(coords, numbers, parents) of an MMFF-optimised conformer, or None."""
  from rdkit import Chem
  from rdkit.Chem import AllChem
  molh = Chem.AddHs(mol)
  params = AllChem.ETKDGv3()
  params.randomSeed = int(seed)
  params.maxIterations = 200
  if AllChem.EmbedMolecule(molh, params) != 0:
    return None
  if not AllChem.MMFFHasAllMoleculeParams(molh):
    return None
  try:
    if AllChem.MMFFOptimizeMolecule(molh, maxIters=600) == -1:
      return None
  except Exception:
    return None
  xyz = molh.GetConformer().GetPositions()
  numbers = np.array([a.GetAtomicNum() for a in molh.GetAtoms()], dtype=np.int8)
  parents = np.full(len(numbers), -1, dtype=np.int16)
  for a in molh.GetAtoms():
    if a.GetAtomicNum() == 1:
      parents[a.GetIdx()] = a.GetNeighbors()[0].GetIdx()
  if not _geometry_sane(molh, xyz):
    return None
  return xyz, numbers, parents


def _geometry_sane(molh, xyz):
  """Bond lengths plausible and no non-bonded atoms closer than 1.6 A (H: 1.4)."""
  d = np.sqrt(((xyz[:, None] - xyz[None]) ** 2).sum(-1))
  n = len(xyz)
  bonded = np.zeros((n, n), bool)
  for b in molh.GetBonds():
    i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
    bonded[i, j] = bonded[j, i] = True
  bl = d[bonded]
  if bl.size and (bl.min() < 0.9 or bl.max() > 2.1):
    return False
  two = (bonded.astype(np.int32) @ bonded.astype(np.int32)) > 0
  far = ~(bonded | two | np.eye(n, dtype=bool))
  return not far.any() or d[far].min() > 1.45


def _add_metal(xyz, numbers, parents, rng):
  """Adds a metal near an O or N donor; returns new arrays and symbol, or None."""
  donors = [i for i in range(len(numbers)) if numbers[i] in (7, 8)]
  rng.shuffle(donors)
  heavy = numbers != 1
  for d in donors[:4]:
    zm, sym, lo, hi = METALS[rng.integers(len(METALS))]
    dist = rng.uniform(lo, hi)
    hs = [h for h in range(len(numbers)) if parents[h] == d]
    nbrs = [h for h in hs]
    bonded_heavy = np.where(heavy & (np.linalg.norm(xyz - xyz[d], axis=1) < 1.9))[0]
    nbrs += [k for k in bonded_heavy if k != d]
    keep = np.ones(len(numbers), bool)
    if hs and rng.random() < 0.6:
      h = hs[rng.integers(len(hs))]
      direction = xyz[h] - xyz[d]
      keep[h] = False
    else:
      if not nbrs:
        direction = rng.normal(size=3)
      else:
        v = xyz[nbrs] - xyz[d]
        v = v / np.linalg.norm(v, axis=1)[:, None]
        direction = -v.sum(0)
        if np.linalg.norm(direction) < 0.3:
          direction = np.cross(v[0], rng.normal(size=3))
    direction = direction / np.linalg.norm(direction)
    direction = direction + rng.normal(scale=0.25, size=3)
    direction = direction / np.linalg.norm(direction)
    pos = xyz[d] + dist * direction
    r = np.linalg.norm(xyz[keep] - pos, axis=1)
    others = np.arange(len(numbers))[keep] != d
    zk = numbers[keep][others]
    rk = r[others]
    if rk.size and (rk[zk != 1].min(initial=9) < 2.7 or rk[zk == 1].min(initial=9) < 2.3):
      continue
    idx = np.where(keep)[0]
    remap = -np.ones(len(numbers), np.int64)
    remap[idx] = np.arange(len(idx))
    new_parents = parents[keep].astype(np.int64)
    new_parents[new_parents >= 0] = remap[new_parents[new_parents >= 0]]
    xyz2 = np.vstack([xyz[keep], pos[None]])
    numbers2 = np.concatenate([numbers[keep], [zm]]).astype(np.int8)
    parents2 = np.concatenate([new_parents, [-1]]).astype(np.int16)
    return xyz2, numbers2, parents2, sym
  return None


def _build_chunk(args):
  """Worker: a list of (smiles, coords, numbers, parents) from one seeded chunk."""
  seed, chunk, size, metal_fraction = args
  from rdkit import Chem, RDLogger
  RDLogger.DisableLog("rdApp.*")
  rng = np.random.default_rng([seed, chunk])
  fragments = _fragment_table()
  frag_w = np.array([f[6] for f in fragments], dtype=float)
  n_choices = np.arange(2, MAX_HEAVY + 1)
  n_w = n_choices.astype(float) ** 1.2
  n_w /= n_w.sum()
  out, seen = [], set()
  for _ in range(size):
    g = _grow_graph(rng, int(rng.choice(n_choices, p=n_w)), fragments, frag_w)
    if len(g) > MAX_HEAVY:
      continue
    mol = _graph_to_mol(g)
    if mol is None:
      continue
    smiles = Chem.MolToSmiles(mol)
    if smiles in seen:
      continue
    seen.add(smiles)
    emb = _embed(mol, rng.integers(1 << 30))
    if emb is None:
      continue
    xyz, numbers, parents = emb
    if rng.random() < metal_fraction:
      with_metal = _add_metal(xyz, numbers, parents, rng)
      if with_metal is not None:
        xyz, numbers, parents, sym = with_metal
        smiles = smiles + ".[" + sym + "]"
    xyz = xyz - xyz.mean(0)
    out.append((smiles, xyz.astype(np.float32), numbers, parents))
  return out


def build_library(count, seed=0, processes=2, metal_fraction=0.06, chunk_size=50):
  """Builds a ConformerLibrary of `count` distinct molecules (fewer if the
  generator runs dry).  The result depends on seed only, not on processes."""
  import multiprocessing as mp
  entries, seen = [], set()

  def take(chunk_out):
    for e in chunk_out:
      if e[0] not in seen:
        seen.add(e[0])
        entries.append(e)

  max_chunks = 40 + 8 * (count // max(chunk_size // 2, 1) + 1)
  tasks = ((seed, c, chunk_size, metal_fraction) for c in range(max_chunks))
  if processes <= 1:
    for t in tasks:
      take(_build_chunk(t))
      if len(entries) >= count:
        break
  else:
    with mp.get_context("fork").Pool(processes) as pool:
      for chunk_out in pool.imap(_build_chunk, tasks):
        take(chunk_out)
        if len(entries) >= count:
          pool.terminate()
          break
  return ConformerLibrary.from_entries(entries[:count])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output .npz file")
  p.add_argument("--count", type=int, default=10000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--processes", type=int, default=2)
  p.add_argument("--metal-fraction", type=float, default=0.06)
  a = p.parse_args(argv)
  t0 = time.time()
  lib = build_library(a.count, a.seed, a.processes, a.metal_fraction)
  dt = time.time() - t0
  lib.save(a.out)
  n_metal = sum("." in s for s in lib.smiles)
  print("%d molecules (%d with a metal), %d atoms, in %.1f s: %.1f molecules/s"
        % (len(lib), n_metal, len(lib.numbers), dt, len(lib) / max(dt, 1e-9)))


if __name__ == "__main__":
  main()
