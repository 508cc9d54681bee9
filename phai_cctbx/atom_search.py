"""Direct-space atom search: the atoms of a known composition placed in the
cell so that their structure factors fit |F_obs|.

Where the asymmetric unit holds few atoms heavier than hydrogen (small
inorganic and organic cells), their positions are few parameters: a data set
at 2.0 A with 30-60 unique reflections fixes 5-10 atoms' coordinates (15-30
numbers) twice over, while dual-space methods, which assume nothing of the
contents, have too few reflections to reach or to recognise the solution.
The search is that of powder structure solution (global optimisation in
direct space): many random placements of the atoms, each moved by gradient
descent (torch, all in one batch) on R1 between |F_obs| and the scaled
|F_calc| of point atoms (cctbx's scattering factors, one overall B refined
with them), in rounds that keep the best quarter and perturb it.  Each
element's count per cell (``composition``) is laid out as atoms in general
positions and, for a remainder, atoms on special positions (inversion
centres, mirrors, 2-fold axes: cctbx's Wyckoff table), which the search
keeps there; each placement draws its own layout (which special positions;
in groups with mirrors, also general atoms split into two on mirrors), the
first atom on a special position only one of each set of positions that a
shift of the origin relates.  Hydrogen is left out.  In molecular crystals
(carbon and other non-metals) most placements are kept molecular as they
descend: every atom within a bond length of another, none closer than
1.15 A (:meth:`AtomSearch.bond_penalty`), which narrows the search to
chemically possible arrangements; the rest stay free atoms.  In cells of heavy and
light atoms (K, Si, Al beside O) a search that ends without a close fit is
followed by a completion: the heavy atoms of its best models kept, the
light ones placed anew (:func:`run`).  Without a composition, atoms of
unknown element (:data:`UNKNOWN`) have their scattering power fitted with
their sites.

The models give phases (those of F_calc) that compete with the other
candidates of :mod:`phai_cctbx.search`.  The right model is the deepest
minimum by a margin: on calculated data of the development structures at
2.0 A, right models reached R1 0.01-0.02 for inorganic cells (no hydrogen)
and 0.06-0.09 for organic ones, wrong minima lay at 0.05-0.12 with several
distinct solutions of nearly the same R1 (see :func:`decisive`).
"""
from __future__ import absolute_import, division, print_function

import dataclasses
import math

import numpy as np

from cctbx.array_family import flex
from cctbx.eltbx import xray_scattering

#: Most atoms (heavier than hydrogen, asymmetric unit) searched for: as
#: free atoms, and in a :func:`molecular` composition, whose placements are
#: mostly kept molecular (:func:`atom_limit`).  Free atoms beyond 12 fit the
#: few reflections of 2.0 A data with wrong models: Brochantite (15 atoms,
#: 96 reflections) ended in a wrong model of R1 0.063 that stood out and
#: passed the cross-validated check.
MAX_ATOMS = 12
#: In a molecular composition given with the data the random search places
#: up to 20 atoms; beyond :data:`SURE_MOLECULAR_ATOMS` it reaches the right
#: model only at times, so that where none is decisive the heavy atoms of
#: unknown element are searched for too (:func:`phai_cctbx.search.heavy_unknown_for_given`).
#: Measured at 2.0 A (``atom_search.run``, the structure's composition,
#: 2048 placements, seed 0; cells of ``../shared/data/structures/p21c_large``
#: beyond 16 atoms): right best models (r 0.94-0.96, R1 0.14-0.15) for
#: COD 2008520 (18 atoms, 141 reflections; unsolved by every stage
#: before) and dkratzert 2004809 (18), r 0.94 for 2004994 (17), 0.86 for
#: WICZUF (18); none of the cells of 21-27 atoms (best models r 0.1-0.4),
#: so the limit stops at 20.  A guessed composition stays within
#: :data:`SURE_MOLECULAR_ATOMS`: its count is off by an atom or two, which
#: such a search does not survive (:func:`phai_cctbx.search.atom_search_atoms`).
MAX_MOLECULAR_ATOMS = 20
SURE_MOLECULAR_ATOMS = 16

#: Element -> the longest bond (A) to its nearest neighbour heavier than
#: hydrogen in a molecular crystal.  Where every element of the composition
#: is one of these and carbon is among them, a share
#: (:data:`BONDED_SHARE`) of the placements is kept molecular during the
#: descent (:meth:`AtomSearch.bond_penalty`): every atom has a neighbour
#: within its limit, and no two atoms are closer than :data:`CLASH_DISTANCE`.
#: The others are searched as free atoms, so that a water molecule or an
#: ion with no bond to the rest is still found.  In any other composition
#: the same share of the placements keeps the contacts of an ionic crystal
#: (:func:`contact_distance`, :meth:`AtomSearch.contact_penalty`).
BOND_LIMITS = {"B": 1.65, "C": 1.6, "N": 1.6, "O": 1.6, "F": 1.6, "Si": 1.95, "P": 1.95,
               "S": 1.95, "Cl": 1.95, "Br": 2.2, "I": 2.4}
CLASH_DISTANCE = 1.15
BONDED_SHARE = 0.75
#: Weight of the bond (or contact) penalty (A^-2, per atom) beside R1 in
#: the descent.
BOND_WEIGHT = 0.3

#: Shortest contacts (A) that :func:`contact_distance` allows in a cell that
#: is not :func:`molecular`: between two anions (O, F; O-O in SiO4 2.6,
#: in NO3 2.1), between two metals (elements without a
#: :data:`BOND_LIMITS` entry; Cu-Cu 2.5), between a metal and an anion
#: (Li-O 1.9, Cr(VI)-O 1.6), and between any other pair (C-O in CO3 1.28,
#: N-O in NO3 1.22).
ANION_CONTACT = 2.0
METAL_CONTACT = 2.3
METAL_ANION_CONTACT = 1.55
MIN_CONTACT = 1.1
ANIONS = ("O", "F")

#: An atom of unknown element: where no composition is known but the cell
#: is not that of an organic crystal
#: (:func:`phai_cctbx.composition_guess.unknown_alternatives`), the search
#: places atoms of this symbol, each with the form factor of
#: :data:`UNKNOWN_SHAPE` times a weight of its own that the descent fits
#: beside the sites, from exp(-1) to exp(2.5) times it (3 to 97 electrons:
#: from a light atom to lead).  Their models then carry those weights as
#: occupancies.  Contacts between them: :data:`MIN_CONTACT`.
UNKNOWN = "X"
UNKNOWN_SHAPE = "O"
UNKNOWN_LOG_WEIGHT = (-1.0, 2.5)
#: Adam's step for the log weights of unknown atoms.
UNKNOWN_WEIGHT_LR = 0.05

#: Random kicks during each round's descent of a random placement
#: (:meth:`AtomSearch.fit`): r.m.s. per coordinate and step, in fractions
#: of the cell edges, falling linearly to none at half the round's steps,
#: so that a placement caught in a shallow minimum (a molecule half in
#: place) can leave it.  Measured on calculated data at 2.0 A of
#: 12-13-atom molecules of larger cells that the search missed for one of
#: two seeds or both (ACBNZA01, BIYRIM01, COD 2000724, aspirin ACSALA01,
#: paracetamol HXACAN11; ``atom_search.run``, seeds 1 and 2): the best model
#: right (r > 0.95) in 9 of the 10 searches against 2 without kicks.
DESCENT_NOISE = 0.01

#: The most atom-reflection terms (placements x atoms x proper symmetry
#: operations x reflections x gradient steps) an atom search computes, about
#: 20 s on one CPU core: 2048 placements of 8 atoms against 45 reflections
#: in P2_1/c, 1000 steps each.  Larger problems get fewer placements.
MAX_WORK = 1.5e9

#: Sets and gradient steps of the cross-validated R1 (:meth:`AtomSearch.free_r1`).
FREE_FOLDS = 5
FREE_STEPS = 100
#: A model that stands out is confirmed when its cross-validated R1 exceeds
#: its R1 by less than this (:func:`confirmed`).
FREE_EXCESS = 0.10

#: A model is the solution when its R1 is below this fraction of the R1 of
#: the best model that gives other phases, or no other model among the best
#: ones gives other phases (:func:`decisive`) ...
DECISIVE_GAP = 0.5
#: ... and its R1 is below this.  On calculated data of the development
#: structures (1.6 and 2.0 A) the right models that stood out had R1 up to
#: 0.091 (organic cells, hydrogen left out of the model); one wrong model
#: whose best placements all agreed had 0.119 (Nontronite at 2.0 A).
DECISIVE_R1 = 0.10
#: With a guessed composition (:mod:`phai_cctbx.composition_guess`: carbon
#: atoms for C, N and O) the right model fits worse: R1 0.119 for the COD
#: 2016452 measured data (r 0.996), where all the best placements agreed.
#: Such a model, standing out below this R1 and confirmed, is called probably
#: solved, never solved.  (With a guessed composition every model that
#: stands out needs the confirmation, in :mod:`phai_cctbx.search`.)  So is
#: the model of a given molecular composition (:func:`molecular`) between
#: :data:`DECISIVE_R1` and this: its hydrogen atoms are left out too
#: (biphenyl at 1.6 A, the right model R1 0.108).
GUESSED_R1 = 0.15
#: A model of atoms of unknown element (:data:`UNKNOWN`), whose weights
#: fit the data too, stands out (or is clearly the solution) only below
#: this R1.  On calculated data at 2.0 A without compositions (the 41
#: development structures) the right models of them that stood out had R1
#: 0.016-0.042, and 0.061 and 0.072 (Strontianite, Arcanite); a wrong one,
#: confirmed by its cross-validated R1 (0.120), had 0.071 (Nontronite).
UNKNOWN_R1 = 0.05
#: ... and so does a model where more than this share of the atoms are of
#: unknown element: a few heavy ones among carbon atoms
#: (:func:`phai_cctbx.composition_guess.heavy_unknown_guesses`) count as
#: any guess, two among four as atoms of unknown element (Celadonite at
#: 2.0 A without a composition: C2 X2, a wrong model of R1 0.101,
#: confirmed by its cross-validated R1).
UNKNOWN_SHARE = 0.25


def mostly_unknown(elements):
  """Whether more than :data:`UNKNOWN_SHARE` of the atoms ``elements`` are
  of unknown element: a model held to :data:`UNKNOWN_R1`."""
  return sum(e == UNKNOWN for e in elements) > UNKNOWN_SHARE * len(elements)


@dataclasses.dataclass
class AtomModel:
  """One placement of the atoms and what it gives."""
  elements: tuple        # (N,) element symbols
  occupancies: np.ndarray  # (N,)
  sites: np.ndarray      # (N, 3) fractional coordinates, data's setting
  b: float               # overall isotropic B (A^2)
  r1: float              # R1(|F_obs|, k |F_calc|)
  phases: object         # miller array of phases (degrees), like f_obs
  rot: np.ndarray = None    # (N, 3, 3) and (N, 3): each atom's special
  trans: np.ndarray = None  # position (rot x + trans; identity: general)
  free_r1: float = None     # model_free_r1, once computed


def _form_factor(element):
  """cctbx's form factor of an element (:data:`UNKNOWN_SHAPE`'s for
  :data:`UNKNOWN`)."""
  return xray_scattering.wk1995(UNKNOWN_SHAPE if element == UNKNOWN else element, True).fetch()


def _scattering_weight(element):
  return _form_factor(element).at_stol_sq(0.0)


def special_positions(space_group):
  """Multiplicity -> [(rot (3, 3), trans (3,), free coordinates, origin
  class)] of the special positions of ``space_group`` (its own setting): a
  site x on the position is rot x + trans (cctbx's Wyckoff table, its
  special operators, which are projections).  Positions that a permissible
  shift of the origin (half a cell edge that leaves the group as it is)
  turns into each other share their origin class, the index of the first
  of them."""
  import itertools
  from cctbx import sgtbx
  info = sgtbx.space_group_info(group=space_group)
  table = sgtbx.wyckoff_table(info.type())
  cell = info.any_compatible_unit_cell(volume=1000)
  shifts = [v for v in itertools.product((0, 1), repeat=3)
            if space_group.change_basis(sgtbx.change_of_basis_op(
              "x+%d/2,y+%d/2,z+%d/2" % v)) == space_group]
  order = space_group.order_z()
  probe = np.array([0.1234, 0.2345, 0.3456])
  out, letters = {}, {}
  for i in range(table.size()):
    position = table.position(i)
    if position.multiplicity() == order:
      continue
    op = position.special_op()
    rot = np.array(op.r().as_double()).reshape(3, 3)
    trans = np.array(op.t().as_double())
    site = rot @ probe + trans
    reached = set(table.mapping(sgtbx.site_symmetry(
      cell, space_group, tuple(site + 0.5 * np.array(v)))).position().letter() for v in shifts)
    entries = out.setdefault(position.multiplicity(), [])
    cls = min([letters[l] for l in reached if l in letters], default=len(entries))
    letters[position.letter()] = cls
    entries.append((rot, trans, int(np.linalg.matrix_rank(rot)), cls))
  return out


def _fewest_specials(count, multiplicities):
  """The fewest multiplicities (largest first) that add up to ``count``, or
  None."""
  best = {0: ()}
  for n in range(1, count + 1):
    options = [best[n - m] + (m,) for m in multiplicities if n - m in best]
    if options:
      best[n] = min(options, key=len)
  return tuple(sorted(best[count], reverse=True)) if count in best else None


@dataclasses.dataclass
class ElementLayout:
  """How one element's atoms per cell are laid out: ``general`` atoms in
  general positions, one on a special position of each multiplicity in
  ``special``, and ``partial`` (occupancy) of one more general atom for
  what no special position takes (a non-integral count)."""
  general: int
  special: tuple
  partial: float = 0.0

  def atoms(self):
    return self.general + len(self.special) + (self.partial > 1e-3)


def element_layouts(count, order, specials):
  """The layouts of ``count`` atoms per cell of one element in a group of
  ``order`` with ``specials`` (:func:`special_positions`): first the one of
  fewest atoms (as many in general positions as fit, the rest on the fewest
  special positions); then, where the group has special positions with
  free coordinates (mirrors, 2-fold axes) of multiplicity ``order`` / 2,
  those with one, two, ... or all general atoms split into two on such
  positions (two K on different mirrors of K2SO4 in Pnma instead of one in
  a general position; a planar molecule on a mirror)."""
  whole = int(round(count))
  if abs(count - whole) > 1e-2:
    full = int(math.floor(count / order + 1e-6))
    return [ElementLayout(full, (), count / order - full)]
  general, rest = divmod(whole, order)
  special = _fewest_specials(rest, sorted(specials))
  if special is None:
    return [ElementLayout(general, (), rest / order)]
  out = [ElementLayout(general, special)]
  half = specials.get(order // 2, []) if order % 2 == 0 else []
  if general >= 1 and any(p[2] > 0 for p in half):
    for split in range(1, general + 1):
      out.append(ElementLayout(general - split, special + (order // 2,) * (2 * split)))
  return out


def whole_positions(counts, space_group):
  """Whether the atoms per cell of every element (``counts``, hydrogen
  aside) fill whole positions of ``space_group``: general and special ones,
  none partly occupied (3 atoms per cell of P2_1/c do not)."""
  order = space_group.order_z()
  specials = special_positions(space_group)
  return all(element_layouts(c, order, specials)[0].partial < 1e-3
             for e, c in counts.items() if e not in ("H", "D") and c > 0)


def _heaviest_first(counts):
  return sorted((e for e, c in counts.items() if e not in ("H", "D") and c > 0),
                key=lambda e: -_scattering_weight(e))


def asymmetric_unit_atoms(counts, space_group, max_atoms=None):
  """(elements, occupancies) of the atoms to place, heaviest first, from
  ``counts`` (element -> atoms per unit cell) in their layout of fewest
  atoms (:func:`element_layouts`); hydrogen is left out.

  An atom on a special position of multiplicity m has occupancy m / order:
  summed over the group's operations its copies add up to m full atoms.
  Returns None when there is no atom, or more than ``max_atoms``."""
  order = space_group.order_z()
  specials = special_positions(space_group)
  elements, occupancies = [], []
  for e in _heaviest_first(counts):
    layout = element_layouts(counts[e], order, specials)[0]
    for q in [1.0] * layout.general + [m / order for m in layout.special] + (
        [layout.partial] if layout.partial > 1e-3 else []):
      elements.append(e)
      occupancies.append(q)
  if not elements or (max_atoms is not None and len(elements) > max_atoms):
    return None
  return tuple(elements), np.array(occupancies)


@dataclasses.dataclass
class Layouts:
  """The layout of each placement: atom k (of ``elements``) of placement r
  has occupancy ``occupancies[r, k]`` (0: not used by that placement) and
  lies at ``rot[r, k] x + trans[r, k]`` for free coordinates x."""
  elements: tuple
  occupancies: np.ndarray  # (R, N)
  rot: np.ndarray          # (R, N, 3, 3)
  trans: np.ndarray        # (R, N, 3)
  bonded: np.ndarray = None  # (R,) bool: placements kept molecular (:data:`BOND_LIMITS`)

  def __post_init__(self):
    if self.bonded is None:
      self.bonded = np.zeros(len(self.occupancies), dtype=bool)

  def take(self, index):
    return Layouts(self.elements, self.occupancies[index], self.rot[index], self.trans[index],
                   self.bonded[index])

  def join(self, other):
    return Layouts(self.elements, *(np.concatenate([a, b]) for a, b in (
      (self.occupancies, other.occupancies), (self.rot, other.rot),
      (self.trans, other.trans), (self.bonded, other.bonded))))

  def used(self, r):
    """(elements, occupancies, rot, trans) of the atoms placement r uses."""
    k = self.occupancies[r] > 0
    return (tuple(e for e, u in zip(self.elements, k) if u), self.occupancies[r][k],
            self.rot[r][k], self.trans[r][k])


#: Shares of the placements whose elements all take the layout of fewest
#: atoms, each one of its layouts at random, and each its most split layout
#: (:func:`element_layouts`).  The layout of fewest atoms is the commonest
#: in real cells but not the only one: among 8192 placements of the
#: development structures' compositions at 2.0 A, the true layout (each
#: atom's multiplicity and kind of special position) came up 6 times for
#: BlueObelisk 1000193 (F on a general position, a 2-fold axis and a
#: mirror, C2/m) and for Celadonite, 10 for Nontronite, 99 for Arcanite with
#: the shares (0.5, 0.3, 0.2), and 15, 19, 14 and 182 with these; the
#: commonest true layouts fell from 1073-1685 (Bischofite, Strontianite,
#: Witherite, CaCO3, 1000007) to 828-1316.
LAYOUT_MODES = (0.25, 0.5, 0.25)

#: The odds of the kinds of special position (points, axes, planes) are
#: drawn for each placement from a Dirichlet distribution of this
#: concentration: below 1, many placements favour one kind (every atom on
#: a mirror, as in layer structures; metal atoms on inversion centres).
KIND_CONCENTRATION = 0.5


def sample_layouts(counts, space_group, restarts, seed=0, max_atoms=None, fix_origin=True):
  """:class:`Layouts` of ``restarts`` placements of ``counts`` (element ->
  atoms per unit cell), or None as :func:`asymmetric_unit_atoms`.

  Each special position is drawn from those of its multiplicity: first its
  kind (points, axes, planes: 0, 1 or 2 free coordinates), at odds drawn
  for each placement (:data:`KIND_CONCENTRATION`), then one of that kind.
  An atom does not take a point another has taken, and the first atom on a
  special position takes one of each origin class only (shifting the
  origin moves it onto the others) where ``fix_origin``.  In a
  :func:`molecular` composition a share (:data:`BONDED_SHARE`) of the
  placements is marked ``bonded`` (kept molecular), in any other the same
  share (kept to the contacts of :func:`contact_distance`)."""
  if asymmetric_unit_atoms(counts, space_group, max_atoms) is None:
    return None
  rng = np.random.default_rng(seed)
  order = space_group.order_z()
  specials = special_positions(space_group)
  options = [(e, element_layouts(counts[e], order, specials)) for e in _heaviest_first(counts)]
  elements = tuple(e for e, opts in options for _ in range(max(o.atoms() for o in opts)))
  n = len(elements)
  occ = np.zeros((restarts, n))
  rot = np.tile(np.eye(3), (restarts, n, 1, 1))
  trans = np.zeros((restarts, n, 3))
  for r in range(restarts):
    mode = rng.choice(len(LAYOUT_MODES), p=LAYOUT_MODES)
    kinds = rng.dirichlet([KIND_CONCENTRATION] * 3)
    taken = set()
    k = 0
    for e, opts in options:
      pick = opts[(0, rng.integers(len(opts)), -1)[mode]]
      j = k
      occ[r, j:j + pick.general] = 1.0
      j += pick.general
      for m in pick.special:
        free = [i for i, p in enumerate(specials[m])
                if (p[2] > 0 or (m, i) not in taken)
                and (taken or not fix_origin or p[3] == i)]
        free = free or list(range(len(specials[m])))
        dof = np.array([specials[m][i][2] for i in free])
        w = kinds[dof] / np.bincount(dof, minlength=3)[dof]
        i = free[rng.choice(len(free), p=w / w.sum())]
        taken.add((m, i))
        occ[r, j], rot[r, j], trans[r, j] = m / order, specials[m][i][0], specials[m][i][1]
        j += 1
      if pick.partial > 1e-3:
        occ[r, j] = pick.partial
      k += max(o.atoms() for o in opts)
  bonded = rng.random(restarts) < BONDED_SHARE
  return Layouts(elements, occ, rot, trans, bonded)


def contact_distance(a, b):
  """The shortest distance (A) the search allows between atoms of
  elements ``a`` and ``b`` in a cell that is not :func:`molecular`
  (:data:`ANION_CONTACT` and the constants beside it)."""
  if UNKNOWN in (a, b):
    return MIN_CONTACT
  metal_a, metal_b = a not in BOND_LIMITS, b not in BOND_LIMITS
  if a in ANIONS and b in ANIONS:
    return ANION_CONTACT
  if metal_a and metal_b:
    return METAL_CONTACT
  if (metal_a and b in ANIONS) or (metal_b and a in ANIONS):
    return METAL_ANION_CONTACT
  return MIN_CONTACT


def atom_limit(counts, guessed=False):
  """The most atoms the search places for ``counts``: :data:`MAX_MOLECULAR_ATOMS`
  in a :func:`molecular` composition (:data:`SURE_MOLECULAR_ATOMS` where
  ``guessed``), else :data:`MAX_ATOMS`."""
  if not molecular(counts):
    return MAX_ATOMS
  return SURE_MOLECULAR_ATOMS if guessed else MAX_MOLECULAR_ATOMS


def peak_atom_limit(counts, reflections, space_group=None, guessed=False):
  """The most atoms :func:`from_peaks` places for ``counts`` against
  ``reflections`` unique reflections: :func:`atom_limit` (of a ``guessed``
  composition: the limit to which the searches place a given one surely
  too), or more where the data allow it: in a composition of known
  elements up to one atom per :data:`PEAK_REFLECTIONS_PER_ATOM`
  reflections, and (given the
  ``space_group``) where :func:`heavy_counts` gives heavy atoms to search
  for first, whose maps the peaks then come from, or the counts hold such
  heavy atoms of unknown element (:func:`heavy_unknown`), up to
  :func:`heavy_peak_limit`; at most :data:`PEAK_MAX_ATOMS`.

  The first rule holds for inorganic compositions too: the peaks of a map
  bound the search as bond rules do, where random placements of more than
  :data:`MAX_ATOMS` free atoms fit wrong models.  Kernite at 1.6 A (Na2 B4
  O11 in the asymmetric unit, no heavy atoms to search for first, 248
  reflections): its dual-space maps (r 0.98) became a model of R1 0.020,
  "solved", where the atoms of unknown element among carbon that it got
  before ended at R1 0.21, "not solved"."""
  limit = atom_limit(counts, guessed)
  if UNKNOWN not in counts:
    limit = max(limit, min(PEAK_MAX_ATOMS, reflections // PEAK_REFLECTIONS_PER_ATOM))
  if heavy_unknown(counts) or (
      space_group is not None and heavy_counts(counts, space_group) is not None):
    limit = max(limit, heavy_peak_limit(reflections))
  return limit


def heavy_peak_limit(reflections):
  """The most atoms :func:`from_peaks` places from the maps of heavy-atom
  models against ``reflections`` unique reflections: one per
  :data:`HEAVY_PEAK_REFLECTIONS_PER_ATOM`, at most :data:`PEAK_MAX_ATOMS`."""
  return min(PEAK_MAX_ATOMS, reflections // HEAVY_PEAK_REFLECTIONS_PER_ATOM)


def heavy_unknown(counts):
  """Whether ``counts`` are heavy atoms of unknown element (:data:`UNKNOWN`)
  beside others: the asymmetric unit of a guessed composition completed
  from the maps of a search of those heavy atoms alone
  (:func:`phai_cctbx.composition_guess.heavy_unknown_guesses`)."""
  present = {e for e, c in counts.items() if c > 0 and e not in ("H", "D")}
  return UNKNOWN in present and len(present) > 1


def molecular(counts):
  """Whether ``counts`` (element -> atoms) is that of a molecular crystal
  whose placements the search keeps molecular in part: carbon, and no
  element without a :data:`BOND_LIMITS` entry (no metal), hydrogen aside."""
  elements = {e for e, c in counts.items() if c > 0 and e not in ("H", "D")}
  return "C" in elements and elements <= set(BOND_LIMITS)


class AtomSearch(object):
  """Point atoms of fixed elements against the amplitudes of ``f_obs`` (any
  space group, its own setting), in torch."""

  def __init__(self, f_obs, elements, occupancies, device="cpu"):
    import torch
    self.torch = torch
    self.elements = tuple(elements)
    self.occupancies = np.asarray(occupancies, dtype=float)
    space_group = f_obs.space_group()
    ops = list(space_group.all_ops())
    # With the inversion centre at the origin (the groups phai.solve takes,
    # in any setting), F is real: 2 sum cos over the proper half of the ops.
    self.centric = bool(space_group.is_origin_centric())
    if self.centric:
      ops = [op for op in ops if op.r().determinant() > 0]
    r = np.array([op.r().as_double() for op in ops]).reshape(-1, 3, 3)
    t = np.array([op.t().as_double() for op in ops])
    hkl = np.array(f_obs.indices(), dtype=float)
    stol_sq = f_obs.unit_cell().stol_sq(f_obs.indices()).as_numpy_array()
    form = {e: _form_factor(e) for e in set(self.elements)}
    fj = np.array([[form[e].at_stol_sq(float(s)) for s in stol_sq] for e in self.elements])
    as_t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32, device=device)
    self.device = device
    self._hr = as_t(np.einsum("oij,ri->ojr", r, hkl))  # (O, 3, n): R^T h
    self._ht = as_t(hkl @ t.T).T                        # (O, n): h.t
    self._stol_sq = as_t(stol_sq)
    self._fj = as_t(fj)                                  # (N, n)
    self._occupancies = as_t(self.occupancies)[None]     # (1, N)
    # Atoms of unknown element (UNKNOWN): their weights are fitted in fit().
    self._unknown = as_t([e == UNKNOWN for e in self.elements])[None]  # (1, N)
    self.free_weights = UNKNOWN in self.elements
    self._f = as_t(f_obs.data().as_numpy_array())
    every = list(space_group.all_ops())
    self._all_r = as_t(np.array([op.r().as_double() for op in every]).reshape(-1, 3, 3))
    self._all_t = as_t(np.array([op.t().as_double() for op in every]))
    self._orth = as_t(np.array(f_obs.unit_cell().orthogonalization_matrix()).reshape(3, 3))
    self._bond_limit = as_t([BOND_LIMITS.get(e, 9.0) for e in self.elements])
    self.molecular = molecular(dict.fromkeys(self.elements, 1))
    # The pairs of atoms i <= j whose distances the penalties take: the
    # distance from i to a copy of j equals that from j to a copy of i
    # (under the inverse operation), so the other half adds nothing new.
    pi, pj = np.triu_indices(len(self.elements))
    self._pi = torch.tensor(pi, device=device)
    self._pj = torch.tensor(pj, device=device)
    self._pair_weight = as_t(np.where(pi == pj, 1.0, 2.0))
    self._contact = as_t([contact_distance(self.elements[i], self.elements[j])
                          for i, j in zip(pi, pj)])

  def as_tensors(self, layouts):
    """(occupancies, rot, trans) tensors of :class:`Layouts` (None: the
    engine's occupancies, no special position)."""
    if layouts is None:
      return None
    t = lambda a: self.torch.tensor(np.asarray(a), dtype=self.torch.float32, device=self.device)
    return (t(layouts.occupancies), t(layouts.rot), t(layouts.trans),
            self.torch.tensor(np.asarray(layouts.bonded), dtype=self.torch.bool,
                              device=self.device))

  def bond_penalty(self, sites, occupancies):
    """(R,) how far placements (``sites`` (R, N, 3), atoms of occupancy 0
    not used) are from a molecular crystal: the mean over the atoms of the
    squared excess of the distance to the nearest other atom (any symmetry
    copy) over the element's :data:`BOND_LIMITS`, plus the squared
    shortfall of every distance below :data:`CLASH_DISTANCE` per atom.  An
    atom's own copy closer than 0.5 A (an atom on a special position) does
    not count."""
    torch = self.torch
    dist = self._distances(sites, occupancies)                    # (R, S, P)
    used = occupancies > 0                                        # (R, N)
    count = used.sum(1).clamp(min=1)
    # Nearest copy of j to i, which is that of i to j: a symmetric (R, N, N).
    pair = dist.min(1).values                                     # (R, P)
    n = sites.shape[1]
    nearest = pair.new_full((len(sites), n, n), 99.0)
    nearest[:, self._pi, self._pj] = pair
    nearest[:, self._pj, self._pi] = pair
    nearest = nearest.min(2).values                               # (R, N)
    bond = (torch.relu(nearest - self._bond_limit[None]).pow(2) * used).sum(1) / count
    clash = (torch.relu(CLASH_DISTANCE - dist).pow(2).sum(1) * self._pair_weight).sum(1)
    return bond + clash / count

  def contact_penalty(self, sites, occupancies):
    """(R,) how far placements are from the contacts of an ionic crystal:
    the squared shortfall of every distance (any symmetry copy) below its
    pair's :func:`contact_distance`, per atom (as :meth:`bond_penalty`)."""
    torch = self.torch
    dist = self._distances(sites, occupancies)
    count = (occupancies > 0).sum(1).clamp(min=1)
    short = torch.relu(self._contact[None, None] - dist).pow(2).sum(1)
    return (short * self._pair_weight).sum(1) / count

  def _distances(self, sites, occupancies):
    """(R, S, P) distances (A) from atom i to each symmetry copy s of atom
    j, for the pairs i <= j (``_pi``, ``_pj``; a pair i < j stands for j, i
    too: ``_pair_weight``); 99 where either is unused or for an atom's own
    copy closer than 0.5 A."""
    torch = self.torch
    copies = torch.einsum("sij,rnj->rsni", self._all_r, sites[:, self._pj]) \
      + self._all_t[None, :, None]
    d = sites[:, None, self._pi] - copies                         # (R, S, P, 3)
    # Rounding each fractional coordinate finds the nearest lattice image of
    # any vector shorter than half the smallest spacing of the (100), (010)
    # and (001) planes (its fractional components are then below 1/2): all
    # distances that the penalty counts (below 2.4 A) in cells whose
    # spacings exceed 4.8 A.  Longer distances may come out too long, which
    # can only overstate a bond already missing; training's `nearest_image_d2` is
    # exact but holds for b-unique monoclinic cells only, and the search
    # runs in the data's own setting.
    d = d - torch.round(d)
    dist = (torch.einsum("ij,rspj->rspi", self._orth, d).pow(2).sum(-1) + 1e-9).sqrt()
    used = occupancies > 0                                        # (R, N)
    same = (self._pi == self._pj)[None, None] & (dist < 0.5)
    absent = ~(used[:, self._pi] & used[:, self._pj])[:, None]
    return dist.masked_fill(same | absent, 99.0)

  def placed(self, x, layout=None):
    """Sites (R, N, 3) of free coordinates ``x`` under a layout of
    :meth:`as_tensors` (its special positions)."""
    if layout is None:
      return x
    return self.torch.einsum("bnij,bnj->bni", layout[1], x) + layout[2]

  def weights(self, log_weight):
    """(R, N) factors on the occupancies of log weights ``log_weight`` (R, N):
    exp of them, kept within :data:`UNKNOWN_LOG_WEIGHT`, for the atoms of
    unknown element; 1 for the others."""
    lo, hi = UNKNOWN_LOG_WEIGHT
    return self.torch.exp(log_weight.clamp(lo, hi) * self._unknown)

  def structure_factors(self, sites, b, layout=None, log_weight=None):
    """(A, B): real and imaginary parts (R, n) of F_calc of ``sites`` (R, N, 3)
    with overall B ``b`` (R,); occupancies from ``layout`` (:meth:`as_tensors`)
    or the engine's, times :meth:`weights` of ``log_weight`` where given."""
    torch = self.torch
    occupancies = self._occupancies if layout is None else layout[0]
    if log_weight is not None:
      occupancies = occupancies * self.weights(log_weight)
    angle = 2 * math.pi * (torch.einsum("bnk,okr->bnor", sites, self._hr) + self._ht[None, None])
    damp = torch.exp(-b.clamp(min=0.0)[:, None] * self._stol_sq[None])  # (R, n)
    weight = occupancies[:, :, None] * self._fj[None]                     # (R|1, N, n)
    a = (torch.cos(angle).sum(2) * weight).sum(1) * damp
    if self.centric:
      return 2 * a, torch.zeros_like(a)
    s = (torch.sin(angle).sum(2) * weight).sum(1) * damp
    return a, s

  def work(self):
    """Atom-reflection terms of one placement's structure factors."""
    return len(self.elements) * self._hr.shape[0] * self._hr.shape[2]

  def r1(self, sites, b, fit=None, score=None, layout=None, log_weight=None):
    """(R,) R1 between |F_obs| and the least-squares scaled |F_calc|: the
    scale from the reflections ``fit``, R1 over ``score`` ((n,) bool
    tensors; None: all)."""
    a, s = self.structure_factors(sites, b, layout, log_weight)
    fc = (a * a + s * s + 1e-12).sqrt()
    f = self._f[None].expand_as(fc)
    wf = fc if fit is None else fc * fit[None]
    k = (wf * f).sum(1) / (wf * fc).sum(1).clamp(min=1e-12)
    diff = (f - k[:, None] * fc).abs()
    if score is not None:
      diff, f = diff * score[None], f * score[None]
    return diff.sum(1) / f.sum(1).clamp(min=1e-12)

  def _descend(self, sites, b, steps, lr, fit=None, layout=None, noise=0.0, generator=None,
               log_weight=None):
    """``sites`` (R, N, 3) and ``b`` (R,) after ``steps`` of Adam on the sum
    of R1 over the reflections ``fit`` (None: all), atoms kept on their
    special positions (``layout``, :meth:`as_tensors`), with random kicks of
    ``noise`` (:data:`DESCENT_NOISE`; drawn from the CPU ``generator``)
    during the first half of the steps; detached tensors.  Given
    ``log_weight`` (R, N; :meth:`weights`), it is fitted too and returned
    third."""
    torch = self.torch
    x = sites.clone().requires_grad_(True)
    bb = b.clone().requires_grad_(True)
    groups = [{"params": [x, bb], "lr": lr}]
    lw = None
    if log_weight is not None:
      lw = log_weight.clone().requires_grad_(True)
      groups.append({"params": [lw], "lr": UNKNOWN_WEIGHT_LR})
    opt = torch.optim.Adam(groups)
    bonded = None
    if layout is not None and bool(layout[3].any()):
      bonded = layout[3].nonzero()[:, 0]
    penalty = self.bond_penalty if self.molecular else self.contact_penalty
    for step in range(steps):
      placed = self.placed(x, layout)
      loss = self.r1(placed, bb, fit=fit, score=fit, layout=layout, log_weight=lw).sum()
      if bonded is not None:
        loss = loss + BOND_WEIGHT * penalty(placed[bonded], layout[0][bonded]).sum()
      opt.zero_grad()
      loss.backward()
      opt.step()
      if noise > 0 and 2 * step < steps:
        kick = torch.randn(x.shape, generator=generator).to(x.device)
        with torch.no_grad():
          x.add_(noise * (1.0 - 2.0 * step / steps) * kick)
    if lw is not None:
      return self.placed(x, layout).detach(), bb.detach(), lw.detach()
    return self.placed(x, layout).detach(), bb.detach()

  def free_r1(self, sites, b, folds=FREE_FOLDS, steps=FREE_STEPS, lr=0.002, seed=0,
              layouts=None):
    """(R,) cross-validated R1 of models (numpy ``sites`` (R, N, 3), ``b``):
    the reflections split at random into ``folds`` sets; for each set the
    models are refined from where they are against the others
    (``steps`` of gradient descent) and R1 is taken over the set left out,
    pooled over the sets; atoms stay on the special positions of
    ``layouts`` (:class:`Layouts`, one per model; None: none).  A right model stays where the data put it and
    predicts what it was not refined against; a wrong model that fitted
    every reflection by bending to each (few reflections per coordinate)
    moves when some are left out, and predicts them poorly."""
    torch = self.torch
    layout = self.as_tensors(layouts)
    n = self._f.shape[0]
    folds = max(2, min(folds, n // 4))
    order = np.random.default_rng(seed).permutation(n)
    num = torch.zeros(len(sites))
    den = 0.0
    for k in range(folds):
      test = np.zeros(n, dtype=bool)
      test[order[k::folds]] = True
      held = torch.tensor(test, dtype=torch.float32, device=self.device)
      work = 1.0 - held
      x, bb = self._descend(
        torch.tensor(np.asarray(sites), dtype=torch.float32, device=self.device),
        torch.tensor(np.asarray(b), dtype=torch.float32, device=self.device),
        steps, lr, work, layout)
      with torch.no_grad():
        r = self.r1(x, bb, fit=work, score=held, layout=layout).cpu()
      f_held = float(self._f[held > 0].sum())
      num += r * f_held
      den += f_held
    return (num / max(den, 1e-12)).numpy()

  def fit(self, restarts=2048, rounds=5, steps=200, seed=0, lr=0.01, shake=0.05,
          layouts=None, start=None, noise=0.0):
    """Random placements refined by gradient descent: (sites (R, N, 3),
    b (R,), r1 (R,), layouts) of the last round, numpy arrays and the
    :class:`Layouts` of the placements (None where ``layouts`` is None:
    the engine's occupancies, no special position; else one layout per
    placement, ``restarts`` of them).  ``start`` (R, N, 3), where given,
    holds starting sites, NaN where they are drawn at random.

    After each round but the last, the best quarter is kept and each kept
    placement also starts three more, its sites shifted at random
    (``shake`` in fractions of the cell edges).  ``noise``: the random
    kicks of each round's descent (:data:`DESCENT_NOISE`; 0: none).

    Atoms of unknown element (:data:`UNKNOWN`; ``layouts`` needed) start at
    the weight 1 and have it fitted beside their sites; the layouts
    returned carry the weights in their occupancies."""
    torch = self.torch
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    n = len(self.elements)
    if layouts is not None:
      restarts = len(layouts.occupancies)
    elif self.free_weights:
      raise ValueError("atoms of unknown element need layouts")
    lw = torch.zeros(restarts, n, device=self.device) if self.free_weights else None
    sites = torch.rand(restarts, n, 3, generator=g)
    if start is not None:
      start = torch.tensor(np.asarray(start), dtype=sites.dtype)
      sites = torch.where(torch.isnan(start), sites, start)
    b = torch.full((restarts,), 1.5)
    for round_ in range(rounds):
      layout = self.as_tensors(layouts)
      out = self._descend(sites.to(self.device), b.to(self.device), steps, lr, layout=layout,
                          noise=noise, generator=g, log_weight=lw)
      x, bb = out[:2]
      lw = out[2] if lw is not None else None
      with torch.no_grad():
        r1 = self.r1(x, bb, layout=layout, log_weight=lw).cpu()
        sites, b = x.cpu() % 1.0, bb.cpu()
      if round_ == rounds - 1:
        break
      keep = torch.argsort(r1)[: max(restarts // 4, 1)]
      kept_sites, kept_b = sites[keep], b[keep]
      shaken = kept_sites.repeat(3, 1, 1) + shake * torch.randn(
        3 * len(keep), n, 3, generator=g)
      sites = torch.cat([kept_sites, shaken])[:restarts]
      b = torch.cat([kept_b, kept_b.repeat(3)])[:restarts]
      if layouts is not None:
        index = np.concatenate([keep.numpy()] * 4)[:restarts]
        layouts = layouts.take(index)
        if lw is not None:
          lw = lw[torch.as_tensor(index, device=lw.device)]
    if lw is not None:
      with torch.no_grad():
        factor = self.weights(lw).cpu().numpy()
      layouts = dataclasses.replace(layouts, occupancies=layouts.occupancies * factor)
    return sites.numpy(), b.numpy(), r1.numpy(), layouts

  def phases(self, sites, b, layouts=None):
    """(R, n) phases (degrees) of F_calc of numpy ``sites`` (R, N, 3)
    (occupancies from ``layouts``, one per model, or the engine's)."""
    torch = self.torch
    with torch.no_grad():
      a, s = self.structure_factors(
        torch.tensor(np.asarray(sites), dtype=torch.float32, device=self.device),
        torch.tensor(np.asarray(b), dtype=torch.float32, device=self.device),
        self.as_tensors(layouts))
    return np.degrees(np.arctan2(s.cpu().numpy(), a.cpu().numpy()))


def cell_counts(composition, z=None, space_group=None, unit_cell=None):
  """(counts, how): atoms per unit cell of each element of a
  :class:`phai_cctbx.model_building.Composition`, and a few words on where
  they come from; (None, why not) without counts.  The first of
  :func:`cell_count_choices`."""
  choices, how = cell_count_choices(composition, z, space_group, unit_cell)
  return (choices[0] if choices else None), how


def cell_count_choices(composition, z=None, space_group=None, unit_cell=None):
  """([counts, ...], how): the atoms per unit cell of each element of a
  :class:`phai_cctbx.model_building.Composition` (likeliest first, more
  than one only for a formula whose Z is not known), and a few words on
  where they come from; ([], why not) without counts.

  A unit-cell content (SHELX UNIT) is taken as it is; a formula is
  multiplied by ``z`` (the input's Z) or, without it and ``unit_cell``
  given, by the Z that the cell's volume makes likeliest
  (:func:`phai_cctbx.composition_guess.formula_unit_choices`: a molecule
  on an inversion centre, Z = 2 in P2_1/c, is common) and, for an inorganic
  formula, whose volume per atom varies more, by the next one too, else by
  the order of
  ``space_group`` (one formula unit in the asymmetric unit)."""
  if composition is None:
    return [], "no composition"
  if composition.counts is None:
    return [], "the composition gives no counts"
  if composition.per_cell:
    return [dict(composition.counts)], "the unit-cell content"
  if z:
    return [dict(composition.times(z).counts)], "the formula times Z = %g" % z
  if space_group is None:
    return [], "a formula without Z"
  if unit_cell is not None:
    from phai_cctbx.composition_guess import VOLUME_PER_ATOM, formula_unit_choices
    # A molecular crystal's volume per atom varies little: one Z.
    zs = formula_unit_choices(composition.counts, unit_cell, space_group,
                              most=1 if molecular(composition.counts) else 2)
    if zs:
      return ([dict(composition.times(z).counts) for z in zs],
              "the formula times Z = %g (Z not given: estimated from the cell "
              "volume, %g A^3 per atom heavier than hydrogen%s)" % (
                zs[0], VOLUME_PER_ATOM, "".join(
                  "; then Z = %g where no model stands out" % z for z in zs[1:])))
  n = space_group.order_z()
  return ([dict(composition.times(n).counts)],
          "the formula times %d (Z not given: one formula unit in the "
          "asymmetric unit)" % n)


def formula_units_of(model, composition, space_group):
  """Z of an :class:`AtomModel` of ``space_group``: its atoms per cell of the
  formula's first element heavier than hydrogen over that element's count
  in the formula (a :class:`phai_cctbx.model_building.Composition` given as a
  formula, not as the cell content); None otherwise or where it is not a
  whole or half number."""
  if composition is None or composition.counts is None or composition.per_cell:
    return None
  order = space_group.order_z()
  for e in composition.non_hydrogen():
    if composition.counts.get(e):
      per_cell = order * sum(q for el, q in zip(model.elements, model.occupancies) if el == e)
      z = per_cell / composition.counts[e]
      return z if z > 0 and abs(2 * z - round(2 * z)) < 1e-6 else None
  return None


def decisive(r1_of_solutions, limit=DECISIVE_R1):
  """Whether the best of the R1s of distinct solutions (the best model of
  each, lowest first) stands out as the solution: below
  ``limit`` (:data:`DECISIVE_R1`), and either the only solution among the best models
  or below :data:`DECISIVE_GAP` times the next one.

  On calculated data of the development structures at 2.0 A, where the
  search found the right model the best models all gave its phases; where
  it did not, they fell into several solutions of R1 within 20 % of each
  other."""
  if not len(r1_of_solutions) or r1_of_solutions[0] >= limit:
    return False
  return len(r1_of_solutions) == 1 or r1_of_solutions[0] < DECISIVE_GAP * r1_of_solutions[1]


#: A model is a clear solution, less sharply than :func:`decisive` (called
#: probably solved), when its R1 is below this fraction of the next
#: solution's ...
CLEAR_GAP = 0.8
#: ... its cross-validated R1 below this fraction of every other solution's,
#: and it is :func:`confirmed`.
CLEAR_FREE_GAP = 0.85


def clear(r1_of_solutions, free_r1_of_solutions):
  """Whether the best of distinct solutions (R1s and cross-validated R1s of
  the best model of each, lowest R1 first) is clearly the solution where it
  is not :func:`decisive`: R1 below :data:`CLEAR_GAP` times the next one,
  cross-validated R1 below :data:`CLEAR_FREE_GAP` times every other's, and
  :func:`confirmed`.  No R1 limit: measured data fit worse than calculated
  ones.

  Measured: the atom search alone (``atom_search.run``, the structure's
  composition) on the six measured data sets at 1.6 and 2.0 A and the 41
  development structures (calculated data) at the same resolutions.  The
  right models of the measured data that were not decisive fitted with R1
  0.09-0.24 and stood 0.60-0.80 below the next solution (cross-validated
  0.49-0.84): COD 2016452 at 2.0 A, R1 0.094 against 0.156, cross-validated
  0.187 against 0.265 (that search then chose a wrong dual-space map).
  Where the best model was wrong its R1 was within 0.93-1.0 of the next
  (Cryolite, Celadonite at 2.0 A, HMa_Mg at 2.0 A)."""
  r1, free = list(r1_of_solutions), list(free_r1_of_solutions)
  if len(r1) < 2 or len(free) != len(r1):
    return False
  return (r1[0] < CLEAR_GAP * r1[1] and free[0] < CLEAR_FREE_GAP * min(free[1:])
          and confirmed(r1[0], free[0]))


def confirmed(r1, free_r1):
  """Whether a model that stands out keeps predicting reflections it was
  not refined against: ``free_r1`` - ``r1`` below :data:`FREE_EXCESS`.

  Near one reflection per coordinate a wrong model can fit every reflection
  and stand out.  Among random P2_1/c cells of 5-9 atoms at 2.0 A
  (calculated data) one of nine models that stood out was wrong: R1 0.038,
  cross-validated 0.174 (34 reflections, 7 atoms); two right ones checked
  exceeded their R1 by 0.044 and by nothing.  On the development structures
  at 2.0 A the right inorganic models exceeded it by 0.01 at most, the
  organic ones (hydrogens left out) by 0.05-0.12 (those above 0.10 are
  called probably solved), wrong models by 0.12-0.18."""
  return free_r1 - r1 < FREE_EXCESS


def model_free_r1(f_obs, model):
  """:meth:`AtomSearch.free_r1` of one :class:`AtomModel` (its atoms kept on
  their special positions), kept on the model so that a model judged again
  (a second search's models judged beside the first's) is not refined
  again."""
  if model.free_r1 is None:
    engine = AtomSearch(f_obs, model.elements, model.occupancies)
    layouts = Layouts(model.elements, model.occupancies[None], model.rot[None],
                      model.trans[None])
    model.free_r1 = float(engine.free_r1(model.sites[None], np.array([model.b]),
                                         layouts=layouts)[0])
  return model.free_r1


#: Elements that scatter at least this many times as strongly as the
#: lightest one (heavier than hydrogen) are the heavy atoms of a cell
#: (:func:`heavy_atoms`): K, Si, Al beside O; not N, O beside C.
HEAVY_RATIO = 1.5

#: A search whose best model has an R1 above this is followed by a
#: completion (:func:`run`): right inorganic models reach 0.004-0.03.
COMPLETE_ABOVE_R1 = 0.04

#: Models whose heavy atoms a completion keeps.
COMPLETION_MODELS = 8


def heavy_atoms(elements):
  """Of the atoms ``elements`` (heaviest first, :class:`Layouts`), how many
  lead the list as heavy atoms (:data:`HEAVY_RATIO`); 0 where every element
  counts as heavy or none does."""
  weight = [_scattering_weight(e) for e in elements]
  heavy = [w >= HEAVY_RATIO * min(weight) for w in weight]
  return sum(heavy) if 0 < sum(heavy) < len(heavy) else 0


#: A cell whose asymmetric unit holds more atoms than the search places
#: (:func:`atom_limit`) is searched first for its heavy atoms alone
#: (:func:`heavy_counts`), where they are at most this many ...
HEAVY_SEARCH_MAX_ATOMS = 6
#: ... and scatter at least this share of the cell's sum of f0^2 (hydrogen
#: left out): their model's phases are then half right or better, and the
#: whole asymmetric unit is placed from its map's peaks
#: (:func:`peak_atom_limit`).
HEAVY_SHARE = 0.25
#: From the maps of heavy-atom models, :func:`from_peaks` places up to one
#: atom per this many unique reflections (at most :data:`PEAK_MAX_ATOMS`):
#: the heavy atoms, right from the start, carry much of the fit.
HEAVY_PEAK_REFLECTIONS_PER_ATOM = 6


def _scattering_power(elements, occupancies):
  """Each atom's share of the scattering: occupancy * f0^2."""
  return np.array([_scattering_weight(e) ** 2 for e in elements]) * np.asarray(occupancies)


def heavy_counts(counts, space_group):
  """``counts`` (element -> atoms per unit cell) of the heavy elements
  alone (:func:`heavy_atoms` of the asymmetric unit's atoms; of more than
  :data:`HEAVY_SEARCH_MAX_ATOMS` per asymmetric unit, the heaviest elements
  that keep within it), for a search of the heavy atoms where the whole
  asymmetric unit is beyond the random search; None for a :func:`molecular`
  composition (no metal: S and Cl among C, N, O; not measured), where the
  atoms do not fall into heavy and light, no heavy element keeps within
  the limit, or the heavy atoms scatter less than :data:`HEAVY_SHARE` of
  the cell.

  Why: the classic route for a metal-organic cell (Patterson or
  direct-space search of the heavy atoms, then the rest from the maps).
  The measured water set (C14 H20 Mn N2 O12 S2, Z = 2, 15.5 atoms in the
  asymmetric unit, 122 reflections at 2.0 A): its heavy atoms alone
  (Mn on an inversion centre, S) gave a model of R1 0.565 and r 0.858,
  and the whole asymmetric unit placed from that model's map peaks one of
  R1 0.106 and r 0.997 (cross-validated R1 0.176)."""
  atoms = asymmetric_unit_atoms(counts, space_group)
  if atoms is None or molecular(counts):
    return None
  elements, occupancies = atoms
  n = heavy_atoms(elements)
  # The heaviest elements of the heavy ones, as many as the limit allows.
  while n and occupancies[:n].sum() > HEAVY_SEARCH_MAX_ATOMS:
    n = elements.index(elements[n - 1])
  if not n:
    return None
  f2 = _scattering_power(elements, occupancies)
  if f2[:n].sum() < HEAVY_SHARE * f2.sum():
    return None
  heavy = set(elements[:n])
  return {e: c for e, c in counts.items() if e in heavy}


#: A model's atoms repeat under a half translation of the cell
#: (:func:`pseudo_translation`) where atoms of this share of its scattering
#: (sum of occupancy * f0^2) have an atom of their element within
#: :data:`PSEUDO_TOLERANCE` (A) of their translated site.
PSEUDO_SHARE = 0.9
PSEUDO_TOLERANCE = 0.5


def pseudo_translation(model, unit_cell, space_group):
  """The half translation of the cell (a vector of 0 and 1/2, not one of the
  group's own) under which ``model``'s atoms (:class:`AtomModel`, all
  copies in the cell) nearly repeat (:data:`PSEUDO_SHARE`,
  :data:`PSEUDO_TOLERANCE`), or None.

  Why: heavy atoms that repeat under such a translation scatter nothing
  into half the reflections, so their model fixes none of those signs, and
  the rest of the cell can be placed from its map in two ways that fit
  |F_obs| alike.  Vauquelinite at 2.0 A (Pb2 Cu Cr P O9 per asymmetric
  unit, 97 reflections): the heavy atoms of its best heavy-atom model lay
  at y = 0.25 (c/2 a pseudo-translation), and the whole model from that
  model's map was wrong (r 0.09) yet stood out (R1 0.057, cross-validated
  0.086)."""
  import itertools
  from cctbx import crystal
  from cctbx import sgtbx
  special = crystal.special_position_settings(
    crystal.symmetry(unit_cell=unit_cell, space_group=space_group),
    min_distance_sym_equiv=0.5)
  weight = _scattering_power(model.elements, model.occupancies)
  copies = {}
  for e, site in zip(model.elements, model.sites):
    equiv = sgtbx.sym_equiv_sites(special.site_symmetry(tuple(float(x) for x in site)))
    copies.setdefault(e, []).extend(np.array(equiv.coordinates()))
  own = {tuple(np.round(np.mod(np.array(op.t().as_double()), 1.0), 3))
         for op in space_group.all_ops() if op.r().is_unit_mx()}
  frac_to_cart = np.array(unit_cell.orthogonalization_matrix()).reshape(3, 3)
  for t in itertools.product((0.0, 0.5), repeat=3):
    if t in own:
      continue
    matched = 0.0
    for e, site, w in zip(model.elements, model.sites, weight):
      d = np.array(copies[e]) - (np.asarray(site, dtype=float) + t)
      d -= np.round(d)
      if np.min(np.linalg.norm(d @ frac_to_cart.T, axis=1)) < PSEUDO_TOLERANCE:
        matched += w
    if matched >= PSEUDO_SHARE * weight.sum():
      return t
  return None


def _completion(engine, sites, b, r1, layouts, counts, space_group, restarts, seed, rounds,
                steps):
  """A second search that keeps the heavy atoms of the best distinct models
  of the first (:data:`COMPLETION_MODELS` of them, distinct in R1 to the
  third decimal; sites and special positions) and places the light atoms
  anew: for where the heavy atoms are right but the light ones (O among K,
  Si, Al) settled wrong.  Returns (sites, b, r1, layouts) as
  :meth:`AtomSearch.fit`, or None where the atoms do not fall into heavy
  and light."""
  heavy = heavy_atoms(layouts.elements)
  if not heavy:
    return None
  order = np.argsort(r1)
  chosen, seen = [], set()
  for i in order:
    key = round(float(r1[i]), 3)
    if key not in seen:
      seen.add(key)
      chosen.append(i)
    if len(chosen) == COMPLETION_MODELS:
      break
  parent = np.resize(np.array(chosen), restarts)
  fresh = sample_layouts(counts, space_group, restarts, seed + 1, fix_origin=False)
  for a, b_ in ((fresh.occupancies, layouts.occupancies), (fresh.rot, layouts.rot),
                (fresh.trans, layouts.trans)):
    a[:, :heavy] = b_[parent, :heavy]
  start = np.full(fresh.trans.shape, np.nan)
  start[:, :heavy] = sites[parent, :heavy]
  return engine.fit(rounds=rounds, steps=steps, seed=seed + 1, layouts=fresh, start=start)


def run(f_obs, counts, restarts=2048, rounds=5, steps=200, seed=0, keep=16,
        max_atoms=None, max_work=MAX_WORK, complete=True):
  """The ``keep`` best models (lowest R1 first) of an atom search for
  ``f_obs`` with ``counts`` (element -> atoms per unit cell), or [] when
  the composition gives no atom or more than ``max_atoms`` (None:
  :func:`atom_limit`).  Each placement
  has its own layout (:func:`sample_layouts`).  Fewer than ``restarts``
  placements are made where they would cost more than ``max_work``
  atom-reflection terms in all (many atoms, many reflections).  Where the
  best model's R1 is above :data:`COMPLETE_ABOVE_R1` and the cell has heavy
  and light atoms, a completion (``complete``) follows at the same cost:
  the heavy atoms of the best models kept, the light ones placed anew.
  The descents of a :func:`molecular` composition get random kicks
  (:data:`DESCENT_NOISE`)."""
  space_group = f_obs.space_group()
  if max_atoms is None:
    max_atoms = atom_limit(counts)
  layouts = sample_layouts(counts, space_group, 1, seed, max_atoms)
  if layouts is None:
    return []
  engine = AtomSearch(f_obs, layouts.elements, layouts.occupancies[0])
  restarts = int(max(16, min(restarts, max_work // (engine.work() * steps * rounds))))
  layouts = sample_layouts(counts, space_group, restarts, seed, max_atoms)
  sites, b, r1, layouts = engine.fit(rounds=rounds, steps=steps, seed=seed, layouts=layouts,
                                     noise=DESCENT_NOISE if engine.molecular else 0.0)
  if complete and r1.min() > COMPLETE_ABOVE_R1:
    more = _completion(engine, sites, b, r1, layouts, counts, space_group, restarts, seed,
                       rounds, steps)
    if more is not None:
      sites, b, r1 = (np.concatenate([x, y]) for x, y in zip((sites, b, r1), more[:3]))
      layouts = layouts.join(more[3])
  return _models(engine, f_obs, sites, b, r1, layouts, keep)


def _models(engine, f_obs, sites, b, r1, layouts, keep):
  """The ``keep`` best placements (lowest R1 first) of a fit as
  :class:`AtomModel`."""
  best = np.argsort(r1)[:keep]
  phases = engine.phases(sites[best], b[best], layouts.take(best))
  from phai_cctbx.dual_space import snap_centric
  out = []
  for i, p in zip(best, phases):
    elements, occupancies, rot, trans = layouts.used(i)
    used = layouts.occupancies[i] > 0
    out.append(AtomModel(
      elements=elements, occupancies=occupancies, sites=sites[i][used], b=float(b[i]),
      r1=float(r1[i]), rot=rot, trans=trans,
      phases=snap_centric(f_obs.customized_copy(
        data=flex.double(np.ascontiguousarray(p, dtype=float)), sigmas=None),
        f_obs.space_group())))
  return out


#: A search from a map's peaks (:func:`from_peaks`): placements per map,
#: rounds of descent (each :data:`PEAK_STEPS` steps), the shift of each
#: starting site (fractions of the cell edges, r.m.s. per coordinate) and
#: the mean share of the sites drawn at random instead (each placement its
#: own, from 0 to twice this).
PEAK_PLACEMENTS = 256
PEAK_ROUNDS = 4
PEAK_STEPS = 200
PEAK_SHIFT = 0.01
PEAK_REPLACED = 0.15
#: From a map's peaks the search places a larger asymmetric unit than from
#: random placements where the data allow it: up to one atom per
#: :data:`PEAK_REFLECTIONS_PER_ATOM` unique reflections, at most
#: :data:`PEAK_MAX_ATOMS` (:func:`peak_atom_limit`), with fewer placements
#: above :func:`atom_limit` (at most :data:`MAX_WORK` per map).  Measured at
#: 2.0 A on three cells of 23-35 atoms (7-10 reflections per atom) such
#: searches solved none and put a wrong model first for one; at 1.6 A
#: (15 per atom) UCECAG01's map of r 0.92 became a model of r 1.00.
PEAK_REFLECTIONS_PER_ATOM = 12
PEAK_MAX_ATOMS = 40


def peak_starts(peaks, n, restarts, rng):
  """(restarts, n, 3) starting sites from one map's peaks (``peaks`` (P, 3),
  fractional, highest first), NaN where a site is drawn at random: the
  first placement takes the ``n`` highest peaks as they are; each other a
  random ``n`` of the highest ``n`` + up to ``n`` / 2, each shifted by
  :data:`PEAK_SHIFT`, and a share of them (:data:`PEAK_REPLACED` on
  average) left to chance: a random omit, as in SHELXD's peak-list
  optimisation.
  The atoms come heaviest first, so the higher peaks go to them."""
  peaks = np.asarray(peaks, dtype=float).reshape(-1, 3)
  start = np.full((restarts, n, 3), np.nan)
  for i in range(restarts):
    if i == 0:
      pick = np.arange(min(n, len(peaks)))
    else:
      pool = min(len(peaks), n + int(rng.integers(0, n // 2 + 1)))
      pick = np.sort(rng.choice(pool, size=min(n, pool), replace=False))
    start[i, :len(pick)] = peaks[pick]
    if i:
      start[i, :len(pick)] += rng.normal(0.0, PEAK_SHIFT, (len(pick), 3))
      start[i][rng.random(n) < rng.uniform(0.0, 2 * PEAK_REPLACED)] = np.nan
  return start


def from_peaks(f_obs, counts, peak_sets, restarts=PEAK_PLACEMENTS, rounds=PEAK_ROUNDS,
               steps=PEAK_STEPS, seed=0, keep=16, max_atoms=None):
  """Atom searches started at the peaks of maps: for each of ``peak_sets``
  (the peaks of one map, (P, 3) fractional sites in ``f_obs``'s setting,
  highest first), ``restarts`` placements of ``counts`` from them
  (:func:`peak_starts`), refined as :func:`run` refines random ones.
  Returns the ``keep`` best models of all (lowest R1 first), [] as
  :func:`run`.

  Why: below atomic resolution the best maps of the dual-space and
  network stages are often half right (r 0.6-0.9), their highest peaks
  mostly on atoms; refined against |F_obs| with the known atoms, such a
  start reaches the right model, which random placements of 13 atoms
  seldom do (aspirin at 2.0 A: the models of random placements R1 0.197,
  r 0.92; from the peaks of the omit-refined map of that model R1 0.112,
  r 1.00).  Each map is refined on its own, so that one whose peaks fit
  well early does not crowd out the others.  Special positions are drawn
  as for random placements, on any origin (the map fixes it).
  ``max_atoms`` (None: :func:`peak_atom_limit`): beyond :func:`atom_limit`
  atoms, fewer placements where they would cost more than :data:`MAX_WORK`
  atom-reflection terms per map (32 at least)."""
  space_group = f_obs.space_group()
  if max_atoms is None:
    max_atoms = peak_atom_limit(counts, f_obs.size(), space_group)
  first = sample_layouts(counts, space_group, 1, seed, max_atoms)
  if first is None or not len(peak_sets):
    return []
  engine = AtomSearch(f_obs, first.elements, first.occupancies[0])
  n = len(first.elements)
  if n > atom_limit(counts):
    restarts = int(max(32, min(restarts, MAX_WORK // (engine.work() * steps * rounds))))
  rng = np.random.default_rng(seed)
  fits = []
  for k, peaks in enumerate(peak_sets):
    layouts = sample_layouts(counts, space_group, restarts, seed + k, max_atoms,
                             fix_origin=False)
    fits.append(engine.fit(rounds=rounds, steps=steps, seed=seed + k, layouts=layouts,
                           start=peak_starts(peaks, n, restarts, rng)))
  layouts = fits[0][3]
  for f in fits[1:]:
    layouts = layouts.join(f[3])
  sites, b, r1 = (np.concatenate([f[i] for f in fits]) for i in range(3))
  return _models(engine, f_obs, sites, b, r1, layouts, keep)
