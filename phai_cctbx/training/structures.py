"""Random P2_1/c crystal structures built from a conformer library (numpy only).

Space group P 1 21/c 1 (unique axis b), symmetry operations
  x,y,z;  -x,y+1/2,-z+1/2;  -x,-y,-z;  x,-y+1/2,z+1/2.
Cartesian frame: a along x, b along y, c = c (cos beta, 0, sin beta).

Packing: the asymmetric unit is a few rigid "units" (a molecule in a general
position, or a centrosymmetric unit centred on an inversion centre).  Each
unit gets an orientation (mostly principal axes near the cell axes) and a
fractional centre.  The cell starts large and shrinks uniformly until the
closest contact between atoms of different units (or symmetry copies) reaches
its threshold (best of a few random starts); then rounds of moves follow: each
general unit slides along a random direction within its free range and turns
by a small random angle when that makes no clash, and each edge shrinks in
turn until contact.  Every stop is found exactly: along a straight move a
squared distance is a quadratic in the step.  Cells whose edges exceed
`max_edge` or whose volume per non-hydrogen atom leaves the allowed window are
rejected and redrawn.

Units centred on an inversion centre:
- a molecule fragment whose heavy atom A (C or N) lost one H, placed so that A
  bonds to its own inversion image along the former A-H direction;
- a metal atom on the centre bonded to a ligand and its inversion image;
- in the inorganic structures, a single ion.
"""
from dataclasses import dataclass, field

import numpy as np

#: Fractional rotation parts (diagonal) and translations of the four operations.
OPS_ROT = np.array([[1, 1, 1], [-1, 1, -1], [-1, -1, -1], [1, -1, 1]], dtype=np.float64)
OPS_TRANS = np.array([[0, 0, 0], [0, .5, .5], [0, 0, 0], [0, .5, .5]], dtype=np.float64)

#: One inversion centre of each of the four Wyckoff positions 2a, 2b, 2c, 2d.
INVERSION_CENTRES = np.array(
  [[0, 0, 0], [.5, 0, 0], [0, 0, .5], [.5, 0, .5]], dtype=np.float64)

METAL_NUMBERS = (3, 11, 12, 13, 19, 20, 25, 26, 27, 28, 29, 30, 37, 38, 47, 48, 55, 56)
DONOR_NUMBERS = (7, 8, 9, 15, 16, 17, 35, 53)

# Ionic radii (Angstrom, about six-coordinate) and charges of the cations of
# the inorganic structures: alkali, alkaline-earth, transition, post-transition
# metals, lanthanides and actinides, so that heavy scatterers are common.
_CATIONS = {3: (1, .76), 11: (1, 1.02), 19: (1, 1.38), 37: (1, 1.52), 55: (1, 1.67),
            47: (1, 1.15), 81: (1, 1.50),
            12: (2, .72), 20: (2, 1.00), 38: (2, 1.18), 56: (2, 1.35), 30: (2, .74),
            48: (2, .95), 82: (2, 1.19), 25: (2, .83), 26: (2, .78), 27: (2, .75),
            28: (2, .69), 29: (2, .73), 80: (2, 1.02),
            13: (3, .54), 31: (3, .62), 49: (3, .80), 39: (3, .90), 57: (3, 1.03),
            60: (3, .98), 67: (3, .90), 83: (3, 1.03),
            40: (4, .72), 58: (4, .87), 90: (4, .94), 92: (4, .89)}
_ANION_RADII = {8: 1.40, 9: 1.33, 17: 1.81, 35: 1.96, 53: 2.20, 16: 1.84, 34: 1.98, 52: 2.21}

_TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
_TRIANGLE = np.array([[1, 0, 0], [-.5, np.sqrt(3) / 2, 0], [-.5, -np.sqrt(3) / 2, 0]])
_OCTAHEDRON = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
# Complex anions: (central atom, bond length, charge, ligand directions, ligand).
_ANION_GROUPS = (
  (16, 1.47, 2, _TETRAHEDRON, 8),    # sulfate
  (15, 1.54, 3, _TETRAHEDRON, 8),    # phosphate
  (17, 1.44, 1, _TETRAHEDRON, 8),    # perchlorate
  (14, 1.63, 4, _TETRAHEDRON, 8),    # orthosilicate
  (33, 1.69, 3, _TETRAHEDRON, 8),    # arsenate
  (24, 1.65, 2, _TETRAHEDRON, 8),    # chromate
  (34, 1.64, 2, _TETRAHEDRON, 8),    # selenate
  (42, 1.77, 2, _TETRAHEDRON, 8),    # molybdate
  (74, 1.78, 2, _TETRAHEDRON, 8),    # tungstate
  (23, 1.72, 3, _TETRAHEDRON, 8),    # vanadate
  (5, 1.39, 1, _TETRAHEDRON, 9),     # tetrafluoroborate
  (6, 1.29, 2, _TRIANGLE, 8),        # carbonate
  (7, 1.25, 1, _TRIANGLE, 8),        # nitrate
  (5, 1.37, 3, _TRIANGLE, 8),        # borate
  (14, 1.68, 2, _OCTAHEDRON, 9),     # hexafluorosilicate
  (13, 1.81, 3, _OCTAHEDRON, 9),     # hexafluoroaluminate
  (15, 1.60, 1, _OCTAHEDRON, 9),     # hexafluorophosphate
)
# Simple anions and their charges.
_SIMPLE_ANIONS = {8: 2, 9: 1, 17: 1, 35: 1, 53: 1, 16: 2, 34: 2, 52: 2}


@dataclass
class Structure:
  """One crystal structure in P 1 21/c 1.

  cell     (6,) float64: a, b, c (Angstrom), alpha, beta, gamma (degrees)
  frac     (N, 3) float32: fractional coordinates in [0, 1) of all atoms of
           the unit cell (all symmetry copies)
  numbers  (N,) int8: atomic numbers
  asym     (n_asym,) int64: indices into frac of one asymmetric unit (atoms
           on inversion centres counted once)
  kind     "organic", "metal-organic", "inorganic" or "random atoms"
  body     (N,) int64: which rigid body (molecule or ion, one symmetry copy)
           each atom belongs to; different bodies obey the contact thresholds
  """
  cell: np.ndarray
  frac: np.ndarray
  numbers: np.ndarray
  asym: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
  kind: str = "organic"
  body: np.ndarray = None

  @property
  def volume(self):
    a, b, c, _, beta, _ = self.cell
    return float(a * b * c * np.sin(np.radians(beta)))

  def volume_per_heavy_atom(self):
    return self.volume / max(int((self.numbers != 1).sum()), 1)


@dataclass
class _Unit:
  """A rigid group of atoms of the asymmetric unit.

  rel      (n, 3) Cartesian coordinates relative to the unit's centre
  numbers  (n,) atomic numbers
  centre   (3,) fractional coordinates of the centre
  special  True when centred on an inversion centre (rel is centrosymmetric)
  asym     (n,) bool: atoms belonging to the asymmetric unit
  cls      (n,) contact classes, which tell N-H/O-H hydrogens from C-H ones
  """
  rel: np.ndarray
  numbers: np.ndarray
  centre: np.ndarray = None
  special: bool = False
  asym: np.ndarray = None
  cls: np.ndarray = None   # contact classes (_element_class); from numbers when None

  @property
  def n_copies(self):
    """Symmetry copies in the cell: 2 on an inversion centre, else 4."""
    return 2 if self.special else 4

  @property
  def classes(self):
    return _element_class(self.numbers) if self.cls is None else self.cls

  @property
  def radius(self):
    return float(np.sqrt((self.rel ** 2).sum(1).max()))


def orthogonalisation(a, b, c, beta):
  """3x3 matrix taking fractional to Cartesian coordinates (columns: a, b, c)."""
  br = np.radians(beta)
  return np.array([[a, 0., c * np.cos(br)], [0., b, 0.], [0., 0., c * np.sin(br)]])


def random_rotation(rng):
  """Uniformly distributed 3x3 rotation matrix."""
  q = rng.normal(size=4)
  w, x, y, z = q / np.linalg.norm(q)
  return np.array([
    [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def axis_angle_rotation(axis, angle):
  """Rotation matrix about a unit axis by angle (radians)."""
  x, y, z = axis / np.linalg.norm(axis)
  k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
  return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def orient(rel, rng, aligned_fraction=0.75, spread_deg=20.0):
  """Rotated copy of rel.  Mostly the principal axes of the atoms are put
  along the Cartesian axes (in random order, then tilted by a random angle of
  about spread_deg): flat and long molecules then stack along cell edges as
  they do in real crystals.  Otherwise a uniformly random orientation."""
  if rng.random() >= aligned_fraction or len(rel) < 2:
    return rel @ random_rotation(rng).T
  _, vecs = np.linalg.eigh(rel.T @ rel)
  frame = vecs[:, rng.permutation(3)] * rng.choice([-1.0, 1.0], size=3)
  if np.linalg.det(frame) < 0:
    frame[:, 0] *= -1
  tilt = axis_angle_rotation(rng.normal(size=3), np.radians(abs(rng.normal(0, spread_deg))))
  return rel @ frame @ tilt.T


def _element_class(z, parents=None):
  """Contact class of each atom: 0 hydrogen (on carbon), 1 other non-metal,
  2 F, P, S, Cl, Br, I, 3 metal, 4 hydrogen on N or O (with ``parents``, the
  index of each hydrogen's bonded atom), 5 N and O."""
  z = np.asarray(z)
  cls = np.ones(z.shape, np.int64)
  cls[z == 1] = 0
  cls[np.isin(z, DONOR_NUMBERS)] = 2
  cls[np.isin(z, (7, 8))] = 5
  cls[np.isin(z, METAL_NUMBERS)] = 3
  if parents is not None:
    parents = np.asarray(parents)
    polar = (z == 1) & (parents >= 0) & np.isin(z[np.maximum(parents, 0)], (7, 8))
    cls[polar] = 4
  return cls


def contact_thresholds(scale=1.0):
  """6x6 minimum intermolecular distances (Angstrom) between the contact
  classes of _element_class in organic and metal-organic structures. N-H and
  O-H hydrogens may come to 1.7 A of N and O, and N and O to 2.6 A of each
  other: the hydrogen bonds that hold most small organic crystals together."""
  t = np.array([
    # H    C    hal/S metal H(N,O) N,O
    [2.0, 2.4, 2.4, 2.3, 2.0, 2.4],   # H on C
    [2.4, 3.0, 3.0, 2.8, 2.4, 3.0],   # C and other non-metals
    [2.4, 3.0, 3.0, 2.0, 2.3, 3.0],   # F, P, S, Cl, Br, I
    [2.3, 2.8, 2.0, 3.0, 2.3, 2.0],   # metal
    [2.0, 2.4, 2.3, 2.3, 2.0, 1.7],   # H on N or O
    [2.4, 3.0, 3.0, 2.0, 1.7, 2.6]])  # N, O
  return t * scale


def insertion_thresholds(thr):
  """Contact thresholds for random insertion, which cannot interlock
  molecules as compression does: contacts 10 % shorter, so that it reaches
  crystal densities, except the hydrogen bonds, which keep their lengths."""
  out = 0.9 * thr
  for i, j in ((4, 5), (5, 4), (5, 5)):
    out[i, j] = thr[i, j]
  return out


def inorganic_threshold(z1, z2):
  """Minimum distance (Angstrom) between two atoms of different ions."""
  c1, c2 = z1 in _CATIONS, z2 in _CATIONS
  if c1 and c2:
    return float(np.clip(1.8 * (_CATIONS[z1][1] + _CATIONS[z2][1]), 3.0, 4.2))
  if c1 or c2:
    zc, za = (z1, z2) if c1 else (z2, z1)
    return 0.92 * (_CATIONS[zc][1] + _ANION_RADII.get(za, 1.5))
  return max(2.75, 0.95 * (_ANION_RADII.get(z1, 1.5) + _ANION_RADII.get(z2, 1.5)))


class _Packer:
  """Rigid units in a monoclinic cell, moved without ever making a contact
  shorter than its threshold.

  units   list of _Unit (rel already rotated, centre set); their centres are
          updated in place as the units move
  thr_fn  thr_fn(zP, zQ) -> (nP, nQ) minimum distances between atoms of two units
  edges   (3,) current a, b, c; beta in degrees (fixed)

  Every move is a straight line in one set of parameters (the cell matrix, or
  the fractional centres); along it each atom-pair distance squared is a
  quadratic, so the first contact is found exactly.
  """

  def __init__(self, units, thr_fn, beta):
    self.units = units
    self.beta = beta
    br = np.radians(beta)
    self.axis_dirs = np.array([[1., 0, 0], [0, 1, 0], [np.cos(br), 0, np.sin(br)]]).T
    bodies = []  # (unit index, op index)
    for u, unit in enumerate(units):
      for op in ((0, 1) if unit.special else (0, 1, 2, 3)):
        bodies.append((u, op))
    self.bodies = bodies
    self.pairs = []  # (unit P, body Q) with atom-pair data
    pu, qu, qop, reach = [], [], [], []
    for p, up in enumerate(units):
      for (uq, op) in bodies:
        rel_q = units[uq].rel * OPS_ROT[op]
        thr = thr_fn(up.numbers, units[uq].numbers)
        self.pairs.append(((up.rel[:, None, :] - rel_q[None, :, :]).reshape(-1, 3),
                           (thr ** 2).reshape(-1)))
        pu.append(p)
        qu.append(uq)
        qop.append(op)
        reach.append(up.radius + units[uq].radius + thr.max())
    self.pu, self.qu, self.qop = np.array(pu), np.array(qu), np.array(qop)
    self.reach = np.array(reach)
    self.self_pair = (self.pu == self.qu) & (self.qop == 0)
    self.edges = None

  def matrix(self, edges=None):
    e = self.edges if edges is None else edges
    return self.axis_dirs * e[None, :]

  def _deltas(self):
    """Fractional centre differences of all pairs, (n_pairs, 3)."""
    c = np.array([u.centre for u in self.units])
    d = c[self.pu] - (OPS_ROT[self.qop] * c[self.qu] + OPS_TRANS[self.qop])
    return d - np.round(d)

  def advance(self, m, dm=None, dcentre=None, limit=1.0, m_end=None):
    """Largest step s in [0, limit] along a move before the first contact:
    the cell matrix m + s * dm (centres fixed), or the centres
    c + s * dcentre (cell fixed, dcentre (n_units, 3) fractional).
    Returns -1.0 when some contact is already too short and closing."""
    d0 = self._deltas()
    if dcentre is not None:
      ddelta = dcentre[self.pu] - OPS_ROT[self.qop] * dcentre[self.qu]
    else:
      ddelta = np.zeros_like(d0)
    m_lo = m if m_end is None else m_end
    rows = np.linalg.norm(np.linalg.inv(m_lo), axis=1)
    n = np.ceil(self.reach.max() * rows + 0.5 + limit * np.abs(ddelta).max(0)).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"),
                    -1).reshape(-1, 3).astype(np.float64)
    delta = d0[:, None, :] + grid[None]  # (pairs, grid, 3)
    w = delta @ m.T
    if dm is not None:
      u = delta @ dm.T
    else:
      u = np.broadcast_to((ddelta @ m.T)[:, None, :], w.shape)
    a = np.maximum((u * u).sum(-1), 1e-12)
    b = (w * u).sum(-1)
    c = (w * w).sum(-1) - self.reach[:, None] ** 2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0))
    s1 = np.maximum((-b - root) / a, 0.0)
    s2 = (-b + root) / a
    hit = (disc > 0) & (s2 > 0) & (s1 < limit)
    hit[self.self_pair, len(grid) // 2] = False
    first = np.where(hit, s1, np.inf)
    pair_first = first.min(1)
    best = limit
    for k in np.argsort(pair_first):
      if pair_first[k] >= best:
        break
      sel = first[k] < best
      dr, thr2 = self.pairs[k]
      ww = dr[None] + w[k, sel][:, None, :]
      uu = u[k, sel]
      aa = np.maximum((uu * uu).sum(-1), 1e-12)[:, None]
      bb = (ww * uu[:, None, :]).sum(-1)
      cc = (ww * ww).sum(-1) - thr2[None]
      dd = bb * bb - aa * cc
      ok = dd > 0
      if not ok.any():
        continue
      rt = np.sqrt(np.where(ok, dd, 0))
      q2 = (-bb + rt) / aa
      ok &= q2 > 0
      if not ok.any():
        continue
      q1 = (-bb - rt) / aa
      if (ok & (q1 < -1e-9) & (cc < -1e-6)).any():
        return -1.0
      s = np.where(ok, np.maximum(q1, 0.0), np.inf).min()
      if s < best:
        best = s
    return best

  def shrink_uniform(self, shape, s_start, s_min):
    """Sets edges = s * shape with s lowered from s_start until contact."""
    m0 = self.matrix(shape)
    s = self.advance(s_start * m0, dm=-m0, limit=s_start - s_min, m_end=s_min * m0)
    if s < 0:
      return False
    self.edges = shape * (s_start - s * (1 - 1e-7))
    return True

  def shrink_axis(self, axis, min_edge):
    """Shortens one edge until contact (or min_edge)."""
    if self.edges[axis] <= min_edge:
      return True
    dm = np.zeros((3, 3))
    dm[:, axis] = -self.axis_dirs[:, axis]
    end = self.edges.copy()
    end[axis] = min_edge
    m = self.matrix()
    s = self.advance(m, dm=dm, limit=self.edges[axis] - min_edge, m_end=self.matrix(end))
    if s < 0:
      return False
    self.edges[axis] -= s * (1 - 1e-6)
    return True

  def rattle(self, u, rng, max_step=1.5):
    """Moves unit u along a random direction to a random point of its free range."""
    m = self.matrix()
    direction = rng.normal(size=3)
    direction *= max_step / np.linalg.norm(direction)
    dc = np.zeros((len(self.units), 3))
    dc[u] = np.linalg.solve(m, direction)
    fwd = self.advance(m, dcentre=dc, limit=1.0)
    back = self.advance(m, dcentre=-dc, limit=1.0)
    if fwd < 0 or back < 0:
      return
    s = rng.uniform(-back, fwd) * 0.999 if rng.random() < 0.5 else 0.5 * (fwd - back)
    self.units[u].centre = self.units[u].centre + s * dc[u]

  def clash(self):
    """Whether some contact is shorter than its threshold."""
    zero = np.zeros((len(self.units), 3))
    return self.advance(self.matrix(), dcentre=zero, limit=1e-9) < 0

  def turn(self, u, rng, spread_deg=12.0):
    """Rotates unit u by a random small angle unless that makes a clash."""
    rot = axis_angle_rotation(rng.normal(size=3), np.radians(rng.normal(0, spread_deg)))
    old = self.units[u].rel
    self._set_rel(u, old @ rot.T)
    if self.clash():
      self._set_rel(u, old)
      return False
    return True

  def _set_rel(self, u, rel):
    """Replaces the coordinates of unit u and the pair data that use them."""
    self.units[u].rel = rel
    for k in np.nonzero((self.pu == u) | (self.qu == u))[0]:
      up, uq, op = self.units[self.pu[k]], self.units[self.qu[k]], self.qop[k]
      dr = (up.rel[:, None, :] - (uq.rel * OPS_ROT[op])[None, :, :]).reshape(-1, 3)
      self.pairs[k] = (dr, self.pairs[k][1])

  def atoms(self):
    """(frac, numbers, asym, body) of all atoms in the cell."""
    inv = np.linalg.inv(self.matrix())
    fr, zs, asym, body = [], [], [], []
    count = 0
    for k, (u, op) in enumerate(self.bodies):
      unit = self.units[u]
      body.append(np.full(len(unit.numbers), k))
      f = unit.centre + unit.rel @ inv.T
      fr.append(OPS_ROT[op] * f + OPS_TRANS[op])
      zs.append(unit.numbers)
      if op == 0:
        mask = unit.asym if unit.asym is not None else np.ones(len(unit.numbers), bool)
        asym.append(count + np.nonzero(mask)[0])
      count += len(unit.numbers)
    frac = np.concatenate(fr)
    frac = frac - np.floor(frac)
    frac[frac >= 1.0] = 0.0
    return frac, np.concatenate(zs), np.concatenate(asym), np.concatenate(body)


def pack(units, thr_fn, rng, beta, max_edge=10.0, min_edge=3.5, rounds=3,
         volume_floor=None, volume_limit=np.inf, turns=True, starts=6):
  """Packs the units into a small cell; returns a _Packer (edges set) or None
  (also when the cell volume ends above volume_limit or an edge above
  max_edge; hopeless cases are abandoned early)."""
  packer = _Packer(units, thr_fn, beta)
  movable = [k for k, u in enumerate(units) if not u.special]
  if volume_floor is None:
    volume_floor = 8.0 * sum(len(u.numbers) for u in units)
  best = None
  for _ in range(starts):
    shape = rng.uniform(0.5, 1.0, size=3)
    v0 = np.linalg.det(packer.matrix(shape))
    s_min = max(min_edge / shape.min(), (volume_floor / v0) ** (1 / 3))
    s_start = max(3.0 * s_min, 2.5 * max(u.radius for u in units) / shape.min() + 6.0)
    if best is not None:
      for k in movable:
        units[k].centre = rng.random(3)
    if not packer.shrink_uniform(shape, s_start, s_min):
      continue
    volume = np.prod(packer.edges)
    if best is None or volume < best[0]:
      best = (volume, packer.edges.copy(), [units[k].centre.copy() for k in movable])
  if best is None:
    return None
  packer.edges = best[1]
  for k, c in zip(movable, best[2]):
    units[k].centre = c
  movable = [k for k, u in enumerate(units) if not u.special]
  sin_beta = np.sin(np.radians(beta))
  for k in range(rounds):
    for u in movable:
      packer.rattle(u, rng)
      if turns:
        packer.turn(u, rng)
    for axis in rng.permutation(3):
      if not packer.shrink_axis(axis, min_edge):
        return None
    slack = 1.0 + 0.6 * (rounds - 1 - k) / max(rounds - 1, 1)
    if (np.prod(packer.edges) * sin_beta > slack * volume_limit
        or packer.edges.max() > slack * max_edge):
      return None
  return packer


# Lattice translations along a and c; along b (perpendicular to a and c in a
# monoclinic cell) the rounded difference is already the nearest image.
_AC_IMAGES = np.array([(i, 0, k) for i in (-1, 0, 1) for k in (-1, 0, 1)], np.float32)
# All 27 neighbouring translations: within one body the nearest image of a pair
# may be its zero translation (a bond), so the next one along b counts too.
_ALL_IMAGES = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1)
                        for k in (-1, 0, 1)], np.float32)


def _image_d2(d, m, images):
  """Squared lengths (..., n_images) of the fractional differences d (..., 3)
  plus each lattice translation in ``images``, for cell matrix m:
  |c + t|^2 = |c|^2 + 2 c.t + |t|^2 with one matrix product."""
  c = d @ m.T
  t = images @ m.T
  return (c * c).sum(-1)[..., None] + 2.0 * (c @ t.T) + (t * t).sum(-1)


def _min_image_d2(a, b, m):
  """Squared shortest distances (..., na, nb) from atoms a (..., na, 3) to the
  lattice images of atoms b (..., nb, 3), fractional coordinates."""
  d = a[..., :, None, :] - b[..., None, :, :]
  d -= np.round(d)
  return _image_d2(d, m, _AC_IMAGES).min(-1)


def _own_image_d2(a, m):
  """Squared shortest distances (..., n, n) between atoms of one body (a:
  (..., n, 3), fractional, not wrapped into the cell) and the lattice images
  of each other, except the zero translation (the body itself)."""
  d = a[..., :, None, :] - a[..., None, :, :]
  r = np.round(d)
  d2 = _image_d2(d - r, m, _ALL_IMAGES)
  # the image t - r is the body itself where t == r, i.e. at r's index in
  # _ALL_IMAGES (r beyond +-1 has no such image)
  index = (r + 1) @ np.array([9, 3, 1], r.dtype)
  index[(np.abs(r) > 1).any(-1)] = -1
  d2[index[..., None] == np.arange(27)] = np.inf
  return d2.min(-1)


def _clash(new_f, new_c, owner, placed_f, placed_c, m, thr2):
  """Whether new atoms (fractional, (T, n_new, 3) for T candidate placements
  or (n_new, 3) for one; ``owner`` numbers their symmetry copies, copy 0
  first; each copy not wrapped into the cell) come closer than the squared
  thresholds ``thr2`` (by element class) to the placed atoms, to the other
  copies, or to lattice images of their own copy. Returns a bool per
  candidate (or one bool).

  The new copies and the placed atoms are each closed under the space group,
  so every contact of copy g is the image of a contact of copy 0: checking
  copy 0 against everything is enough (a quarter of the work).
  """
  single = new_f.ndim == 2
  if single:
    new_f = new_f[None]
  n0 = int(np.count_nonzero(owner == owner[0]))
  first, rest, rest_c = new_f[:, :n0], new_f[:, n0:], new_c[n0:]
  c0 = new_c[:n0]
  bad = (_own_image_d2(first, m) < thr2[c0[:, None], c0[None, :]]).any(axis=(1, 2))
  for f, c in ((rest, rest_c), (placed_f[None], placed_c)):
    todo = np.nonzero(~bad)[0]
    if len(todo) == 0 or f.shape[1] == 0:
      continue
    d2 = _min_image_d2(first[todo], f if len(f) == 1 else f[todo], m)
    bad[todo] = (d2 < thr2[c0[:, None], c[None, :]]).any(axis=(1, 2))
  return bool(bad[0]) if single else bad


class StructureGenerator:
  """Draws random P2_1/c structures from a ConformerLibrary.

  library             ConformerLibrary (numpy arrays only are used)
  rng                 numpy Generator
  max_edge, min_edge  limits on the cell edges (Angstrom)
  max_atoms           cap on atoms in the cell; max_asym: in the asymmetric unit
  inorganic_fraction  share of ionic structures (simple and complex anions, cations
                      from Li to U), as in the ICSD part of real small cells
  inversion_fraction  share of organic structures with a unit on an inversion centre
  random_atom_fraction  share of cells filled with random atoms (training.random_atoms),
                      drawn before the other kinds
  z_prime_weights     relative frequencies of 1, 2 and 3 general units
  volume_per_atom     allowed window of cell volume per non-hydrogen atom (A^3)
  flat_sizes          share of molecules drawn by size first (uniform over sizes)
  squeeze             after random insertion, shrink the cell towards contact
                      (down to squeeze_floor A^3 per non-hydrogen atom)
  rounds, inorganic_rounds  compression rounds (ionic structures need more to
                      reach mineral densities)
  packing             "compress": rigid-body compression to contact (realistic
                      packing, slow); "insert": a cell of the target density is
                      drawn first and the molecules are inserted at random
                      clash-free positions (about 50 times faster, looser packing)
  """

  def __init__(self, library, rng, max_edge=10.0, max_atoms=400, inorganic_fraction=0.2,
               inversion_fraction=0.12, z_prime_weights=(0.82, 0.14, 0.04),
               volume_per_atom=(14.0, 26.0), min_edge=3.5, max_asym=100,
               beta_range=(90.0, 120.0), rounds=4, packing="compress", flat_sizes=0.5,
               inorganic_rounds=10, squeeze=True, squeeze_floor=14.0, random_atom_fraction=0.0):
    if packing not in ("compress", "insert"):
      raise ValueError("packing must be 'compress' or 'insert'")
    self.packing = packing
    self.library = library
    self.rounds = int(rounds)
    self.inorganic_rounds = int(inorganic_rounds)
    self.squeeze = bool(squeeze)
    self.squeeze_floor = float(squeeze_floor)
    self.rng = rng
    self.max_edge = float(max_edge)
    self.min_edge = float(min_edge)
    self.max_atoms = int(max_atoms)
    self.max_asym = int(max_asym)
    self.inorganic_fraction = float(inorganic_fraction)
    self.random_atom_fraction = float(random_atom_fraction)
    self.inversion_fraction = float(inversion_fraction)
    w = np.asarray(z_prime_weights, float)
    self.z_prime_weights = w / w.sum()
    self.volume_per_atom = volume_per_atom
    self.beta_range = beta_range
    self._heavy = library.heavy_counts()
    self._sizes = np.diff(library.offsets)
    self._metal = np.array([np.isin(library.molecule(i)[1], METAL_NUMBERS).any()
                            for i in range(len(library))], bool)
    order = np.argsort(self._heavy, kind="stable")
    self._by_heavy = order
    self._heavy_sorted = self._heavy[order]
    self._sizes_present = np.unique(self._heavy)
    self.flat_sizes = float(flat_sizes)
    self.attempts = 0
    self.accepted = 0
    self._last = None

  # ------------------------------------------------------------ public API
  def sample(self):
    """One Structure."""
    # the kind is drawn once, so that rejections do not change the mix
    if self.random_atom_fraction > 0 and self.rng.random() < self.random_atom_fraction:
      attempt = self._try_random_atoms
    else:
      attempt = self._try_inorganic if self.rng.random() < self.inorganic_fraction \
        else self._try_organic
    while True:
      self.attempts += 1
      s = attempt()
      if s is not None:
        self.accepted += 1
        return s

  def sample_batch(self, n):
    """n structures as padded arrays: frac (n, max_atoms, 3) float32,
    numbers (n, max_atoms) int8 (0 = padding), cell (n, 6) float32."""
    frac = np.zeros((n, self.max_atoms, 3), np.float32)
    numbers = np.zeros((n, self.max_atoms), np.int8)
    cell = np.zeros((n, 6), np.float32)
    for i in range(n):
      s = self.sample()
      k = len(s.numbers)
      frac[i, :k] = s.frac
      numbers[i, :k] = s.numbers
      cell[i] = s.cell
    return {"frac": frac, "numbers": numbers, "cell": cell}

  def _try_random_atoms(self):
    """A cell of random atoms (training.random_atoms, in torch on the CPU), or None."""
    import torch
    from phai_cctbx.training.random_atoms import random_atom_structures
    g = torch.Generator().manual_seed(int(self.rng.integers(2 ** 62)))
    out = random_atom_structures(1, g, "cpu", max_atoms=self.max_atoms, max_edge=self.max_edge,
                                 min_edge=self.min_edge, beta_range=self.beta_range)
    if out["cell"].shape[0] == 0:
      return None
    k = int((out["numbers"][0] != 0).sum())
    body = out["body"][0, :k].numpy()
    return Structure(out["cell"][0].double().numpy(), out["frac"][0, :k].numpy(),
                     out["numbers"][0, :k].numpy(), asym=np.nonzero(body % 4 == 0)[0],
                     kind="random atoms", body=body)

  # ------------------------------------------------------------ helpers
  def _beta(self):
    lo, hi = self.beta_range
    if self.rng.random() < 0.15:
      return 90.0 + self.rng.uniform(0, 1.0) if lo <= 90 else float(lo)
    return float(self.rng.uniform(lo, hi))

  def _pick(self, max_heavy, metal=None):
    """Index of a random library molecule with at most max_heavy heavy atoms.

    With probability ``flat_sizes`` the size is drawn first, uniformly over
    the sizes the library has up to max_heavy, so that small molecules (which
    random graphs make rarely) are as common as large ones; else uniformly
    over the molecules."""
    k = np.searchsorted(self._heavy_sorted, max_heavy, side="right")
    if k == 0:
      return None
    lo, hi = 0, k
    if self.rng.random() < self.flat_sizes:
      size = self._sizes_present[self.rng.integers(np.searchsorted(self._sizes_present, max_heavy,
                                                                   side="right"))]
      lo = np.searchsorted(self._heavy_sorted, size, side="left")
      hi = np.searchsorted(self._heavy_sorted, size, side="right")
    for _ in range(8):
      i = int(self._by_heavy[lo + self.rng.integers(hi - lo)])
      if metal is None or self._metal[i] == metal:
        return i
    return None

  def _molecule_unit(self, i):
    coords, numbers, parents = self.library.molecule(i)
    rel = coords.astype(np.float64)
    rel = rel - rel.mean(0)
    return _Unit(orient(rel, self.rng), numbers.astype(np.int8),
                 cls=_element_class(numbers, parents))

  def _inversion_unit(self, i, thr):
    """Centrosymmetric unit from molecule i, or None."""
    coords, numbers, parents = self.library.molecule(i)
    xyz = coords.astype(np.float64)
    classes = _element_class(numbers, parents)
    metal = np.isin(numbers, METAL_NUMBERS)
    if metal.any():
      m = int(np.nonzero(metal)[0][0])
      keep = ~metal
      lig = xyz[keep] - xyz[m]
      rel = np.vstack([[[0., 0., 0.]], lig, -lig])
      z = np.concatenate([[numbers[m]], numbers[keep], numbers[keep]]).astype(np.int8)
      cls = np.concatenate([[classes[m]], classes[keep], classes[keep]])
      n = len(lig)
      asym = np.zeros(len(z), bool)
      asym[:n + 1] = True
      skip = np.zeros(len(z), bool)
      skip[0] = True
      half_a, half_b = np.arange(1, n + 1), np.arange(n + 1, 2 * n + 1)
    else:
      hyd = np.nonzero((parents >= 0) & np.isin(numbers[np.maximum(parents, 0)], (6, 7)))[0]
      if len(hyd) == 0:
        return None
      h = int(hyd[self.rng.integers(len(hyd))])
      a = int(parents[h])
      u = xyz[h] - xyz[a]
      u /= np.linalg.norm(u)
      d = self.rng.uniform(1.45, 1.55) if numbers[a] == 6 else self.rng.uniform(1.38, 1.45)
      keep = np.ones(len(numbers), bool)
      keep[h] = False
      frag = xyz[keep] - (xyz[a] + 0.5 * d * u)
      rel = np.vstack([frag, -frag])
      z = np.concatenate([numbers[keep], numbers[keep]]).astype(np.int8)
      cls = np.concatenate([classes[keep], classes[keep]])
      n = len(frag)
      asym = np.zeros(len(z), bool)
      asym[:n] = True
      skip = np.zeros(len(z), bool)
      a_new = int(np.count_nonzero(keep[:a]))
      skip[[a_new, a_new + n]] = True
      half_a, half_b = np.arange(n), np.arange(n, 2 * n)
    # contacts between the two halves (atoms bonded across the centre skipped)
    ia = half_a[~skip[half_a]]
    ib = half_b[~skip[half_b]]
    d2 = ((rel[ia][:, None] - rel[ib][None]) ** 2).sum(-1)
    t = thr[cls[ia][:, None], cls[ib][None]] - 0.15
    if (d2 < t ** 2).any():
      return None
    near = np.nonzero(skip)[0]
    far = np.nonzero(~skip)[0]
    if len(far) and len(near):
      dn = ((rel[near][:, None] - rel[far][None]) ** 2).sum(-1)
      own = np.zeros(dn.shape, bool)
      # the skipped atom's own half holds its covalent neighbours
      if not metal.any():
        own[0] = far < n
        own[1] = far >= n
      else:
        own[:] = True
      if (~own & (dn < 2.0 ** 2)).any():
        return None
    return _Unit(orient(rel, self.rng), z, special=True, asym=asym, cls=cls)

  # ------------------------------------------------------------ organic
  def _organic_units(self):
    """(units, beta, thr_fn, thr) for one organic attempt, or None."""
    rng = self.rng
    beta = self._beta()
    scale = rng.uniform(1.0, 1.06)
    thr = contact_thresholds(scale)
    vol_max = self.max_edge ** 3 * np.sin(np.radians(beta))
    heavy_budget = int(vol_max / (4 * self.volume_per_atom[0] * 1.1))
    units = []
    used_centres = []
    heavy_asym = 0
    if rng.random() < self.inversion_fraction:
      n_special = 1 if rng.random() < 0.85 else 2
      for _ in range(n_special):
        i = self._pick(max(heavy_budget - heavy_asym, 0), metal=None)
        if i is None:
          break
        unit = self._inversion_unit(i, thr)
        if unit is None:
          continue
        k = [c for c in range(4) if c not in used_centres][rng.integers(4 - len(used_centres))]
        used_centres.append(k)
        unit.centre = INVERSION_CENTRES[k].copy()
        units.append(unit)
        heavy_asym += int((unit.numbers[unit.asym] != 1).sum())
      if not units:
        return None
      n_general = int(rng.choice(3, p=self.z_prime_weights)) if rng.random() < 0.5 else 0
    else:
      n_general = 1 + int(rng.choice(3, p=self.z_prime_weights))
    for _ in range(n_general):
      left = heavy_budget - heavy_asym
      if left < 1:
        break
      i = self._pick(left)
      if i is None:
        break
      if (self._last is not None and units and not units[-1].special
          and self._heavy[self._last] <= left and rng.random() < 0.3):
        i = self._last
      self._last = i
      unit = self._molecule_unit(i)
      unit.centre = rng.random(3)
      units.append(unit)
      heavy_asym += int((unit.numbers != 1).sum())
    if not units:
      return None
    n_cell = sum(len(u.numbers) * u.n_copies for u in units)
    n_asym = sum(int(u.asym.sum()) if u.special else len(u.numbers) for u in units)
    if n_cell > self.max_atoms or n_asym > self.max_asym:
      return None
    cls = [u.classes for u in units]
    cls_of = {id(u.numbers): c for u, c in zip(units, cls)}

    def thr_fn(zp, zq):
      return thr[cls_of[id(zp)][:, None], cls_of[id(zq)][None, :]]

    return units, beta, thr_fn, thr

  def _try_organic(self):
    chosen = self._organic_units()
    if chosen is None:
      return None
    units, beta, thr_fn, thr = chosen
    if self.packing == "insert":
      return self._insert(units, beta, thr)
    rng = self.rng
    n_heavy = sum(int((u.numbers != 1).sum()) * u.n_copies for u in units)
    packer = pack(units, thr_fn, rng, beta, self.max_edge, self.min_edge,
                  rounds=self.rounds, volume_floor=0.9 * self.volume_per_atom[0] * n_heavy,
                  volume_limit=self.volume_per_atom[1] * n_heavy)
    if packer is None:
      return None
    cell = np.array([*packer.edges, 90.0, beta, 90.0])
    v = cell[0] * cell[1] * cell[2] * np.sin(np.radians(beta)) / n_heavy
    if not self.volume_per_atom[0] <= v <= self.volume_per_atom[1]:
      return None
    frac, numbers, asym, body = packer.atoms()
    kind = "metal-organic" if np.isin(numbers, METAL_NUMBERS).any() else "organic"
    return Structure(cell, frac.astype(np.float32), numbers.astype(np.int8), asym, kind, body)

  # ------------------------------------------------------------ insertion
  def _insert(self, units, beta, thr, tries=10, grow=tuple(1.0 + 0.04 * i for i in range(12))):
    """Random insertion into a cell of the target density, then a squeeze
    of the cell towards contact; Structure or None.

    When a unit finds no clash-free place in ``tries`` random ones, the cell
    is enlarged by the next factor of ``grow`` and the placement starts over.
    """
    rng = self.rng
    n_heavy = sum(int((u.numbers != 1).sum()) * u.n_copies for u in units)
    lo, hi = self.volume_per_atom
    volume = n_heavy * rng.uniform(lo, lo + 0.6 * (hi - lo))
    sin_b = np.sin(np.radians(beta))
    ab = rng.uniform(self.min_edge, self.max_edge, size=(256, 2))
    c = volume / (ab[:, 0] * ab[:, 1] * sin_b)
    fits = np.nonzero((c >= self.min_edge) & (c <= self.max_edge))[0]
    if len(fits) == 0:
      return None
    k = fits[0]
    edges = rng.permutation(np.array([ab[k, 0], ab[k, 1], c[k]]))
    thr2 = (insertion_thresholds(thr) ** 2).astype(np.float32)
    order = sorted(units, key=lambda u: not u.special)
    e = None
    for factor in grow:
      grown = np.minimum(edges * factor, self.max_edge)  # edges at the limit stay there
      if (e is not None and np.allclose(grown, e)) or np.prod(grown) * sin_b > hi * n_heavy:
        return None
      e = grown
      poses = self._place_all(order, orthogonalisation(*e, beta), thr2, tries)
      if poses is not None:
        break
    else:
      return None
    if self.squeeze:
      e = self._squeeze(order, poses, e, beta, thr2, self.squeeze_floor * n_heavy)
    frac, numbers, asym, body = self._assemble(order, poses, orthogonalisation(*e, beta))
    if len(numbers) > self.max_atoms:
      return None
    cell = np.array([*e, 90.0, beta, 90.0])
    kind = "metal-organic" if np.isin(numbers, METAL_NUMBERS).any() else "organic"
    return Structure(cell, frac.astype(np.float32), numbers.astype(np.int8), asym, kind, body)

  @staticmethod
  def _copies(unit, rel, centre, m_inv):
    """Fractional coordinates of all symmetry copies of ``unit`` at Cartesian
    orientation ``rel`` and fractional centre ``centre`` (not wrapped)."""
    f = centre + rel @ m_inv.T
    if unit.special:  # centrosymmetric: its inversion image is itself
      return np.concatenate([f, OPS_ROT[1] * f + OPS_TRANS[1]]).astype(np.float32)
    return np.concatenate([OPS_ROT[op] * f + OPS_TRANS[op] for op in range(4)]).astype(np.float32)

  @staticmethod
  def _contact_arrays(unit):
    """(classes, copy number) of the atoms of all copies of ``unit``."""
    return (np.tile(unit.classes, unit.n_copies),
            np.repeat(np.arange(unit.n_copies), len(unit.numbers)))

  def _place_all(self, units, m, thr2, tries):
    """Poses (Cartesian orientation, fractional centre) of the units placed
    one by one without clashes, or None."""
    m_inv = np.linalg.inv(m)
    m32 = m.astype(np.float32)
    placed_f = np.zeros((0, 3), np.float32)
    placed_c = np.zeros(0, np.int64)
    poses = []
    for unit in units:
      new_c, owner = self._contact_arrays(unit)
      pose = None
      # one candidate first (usually enough while the cell is empty), then
      # the remaining tries in one vectorised check
      for chunk in ((1,) if unit.special else (1, tries - 1)):
        if chunk < 1:
          continue
        cands = [self._candidate(unit) for _ in range(chunk)]
        frac = np.stack([self._copies(unit, rel, centre, m_inv) for rel, centre in cands])
        bad = _clash(frac, new_c, owner, placed_f, placed_c, m32, thr2)
        ok = np.nonzero(~bad)[0]
        if len(ok):
          pose = cands[ok[0]]
          placed_f = np.concatenate([placed_f, frac[ok[0]]])
          placed_c = np.concatenate([placed_c, new_c])
          break
      if pose is None:
        return None
      poses.append(pose)
    return poses

  def _squeeze(self, units, poses, edges, beta, thr2, volume_floor, step=0.985, rounds=30):
    """Shrinks the cell edges (molecules keep their fractional centres and
    Cartesian orientations) in steps of 1.5 % for as long as no contact becomes
    too short and the volume stays above volume_floor; returns the edges.
    Random insertion leaves space; this brings it towards crystal densities."""
    sin_b = np.sin(np.radians(beta))
    arrays = [self._contact_arrays(u) for u in units]
    edges = np.array(edges, float)
    for _ in range(rounds):
      moved = False
      for axis in self.rng.permutation(3):
        trial = edges.copy()
        trial[axis] *= step
        if trial[axis] < self.min_edge or np.prod(trial) * sin_b < volume_floor:
          continue
        m = orthogonalisation(*trial, beta)
        m_inv, m32 = np.linalg.inv(m), m.astype(np.float32)
        frac = [self._copies(u, rel, centre, m_inv) for u, (rel, centre) in zip(units, poses)]
        # each unit against its own images and the units before it, as when
        # placed: every contact between two units is checked once (_clash)
        empty_f, empty_c = np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
        if not any(_clash(frac[k], arrays[k][0], arrays[k][1],
                          np.concatenate([empty_f] + frac[:k]),
                          np.concatenate([empty_c] + [a[0] for a in arrays[:k]]), m32, thr2)
                   for k in range(len(units))):
          edges, moved = trial, True
      if not moved:
        break
    return edges

  def _assemble(self, units, poses, m):
    """(frac, numbers, asym, body) of the posed units in the cell m."""
    m_inv = np.linalg.inv(m)
    frac_parts, number_parts, asym_parts, body_parts = [], [], [], []
    count = body = 0
    for unit, (rel, centre) in zip(units, poses):
      new_f = self._copies(unit, rel, centre, m_inv)
      _, owner = self._contact_arrays(unit)
      frac_parts.append(new_f)
      number_parts.append(np.tile(unit.numbers, unit.n_copies))
      mask = unit.asym if unit.special else np.ones(len(unit.numbers), bool)
      asym_parts.append(count + np.nonzero(mask)[0])
      body_parts.append(body + owner)
      count += len(new_f)
      body += unit.n_copies
    frac = np.concatenate(frac_parts).astype(np.float64)
    frac = frac - np.floor(frac)
    frac[frac >= 1.0] = 0.0
    return frac, np.concatenate(number_parts), np.concatenate(asym_parts), np.concatenate(body_parts)

  def _candidate(self, unit):
    """A random pose of ``unit``: Cartesian orientation and fractional centre
    (its inversion centre for a unit on one)."""
    rng = self.rng
    if unit.special:
      return unit.rel @ random_rotation(rng).T, unit.centre
    return orient(unit.rel, rng), rng.random(3)

  # ------------------------------------------------------------ inorganic
  def _anion_group(self):
    """(rel coords, numbers, charge) of a random anion: a simple one (40 %)
    or a tetrahedral, triangular or octahedral group."""
    rng = self.rng
    if rng.random() < 0.4:
      z = int(rng.choice([8, 9, 17, 35, 53, 16, 34, 52],
                         p=[.3, .1, .2, .1, .05, .13, .07, .05]))
      return np.zeros((1, 3)), np.array([z], np.int8), _SIMPLE_ANIONS[z]
    centre, d, q, shape, ligand = _ANION_GROUPS[rng.integers(len(_ANION_GROUPS))]
    d = d * rng.uniform(0.98, 1.02)
    rel = np.vstack([[0, 0, 0], d * shape])
    return rel, np.array([centre] + [ligand] * len(shape), np.int8), q

  def _try_inorganic(self):
    rng = self.rng
    beta = self._beta()
    anions = []
    charge = 0
    for _ in range(1 + int(rng.choice(3, p=[.5, .35, .15]))):
      rel, z, q = self._anion_group()
      anions.append((rel, z))
      charge += q
    cations = []
    # one or two cation species, balancing the charge
    species = [int(z) for z in rng.choice(list(_CATIONS), size=2, replace=False)]
    while charge > 0:
      options = [c for c in species if _CATIONS[c][0] <= charge] or \
                [c for c, (q, _) in _CATIONS.items() if q <= charge]
      zc = int(options[rng.integers(len(options))])
      cations.append(zc)
      charge -= _CATIONS[zc][0]
    if len(anions) + len(cations) > 12:
      return None
    units = []
    for rel, z in anions:
      units.append(_Unit(rel @ random_rotation(rng).T, z))
    for zc in cations:
      units.append(_Unit(np.zeros((1, 3)), np.array([zc], np.int8)))
    # single ions sometimes sit on inversion centres
    free_centres = list(rng.permutation(4))
    for unit in units:
      if len(unit.numbers) == 1 and free_centres and rng.random() < 0.3:
        unit.special = True
        unit.asym = np.ones(1, bool)
        unit.centre = INVERSION_CENTRES[free_centres.pop()].copy()
      else:
        unit.centre = rng.random(3)
    table = {}

    def thr_fn(zp, zq):
      out = np.empty((len(zp), len(zq)))
      for i, a in enumerate(zp):
        for j, b in enumerate(zq):
          key = (int(a), int(b))
          if key not in table:
            table[key] = inorganic_threshold(*key)
          out[i, j] = table[key]
      return out

    n_atoms = sum(len(u.numbers) * u.n_copies for u in units)
    packer = pack(units, thr_fn, rng, beta, self.max_edge, self.min_edge,
                  rounds=self.inorganic_rounds, volume_floor=6.0 * n_atoms)
    if packer is None:
      return None
    cell = np.array([*packer.edges, 90.0, beta, 90.0])
    frac, numbers, asym, body = packer.atoms()
    if len(numbers) > self.max_atoms:
      return None
    return Structure(cell, frac.astype(np.float32), numbers.astype(np.int8), asym,
                     "inorganic", body)
