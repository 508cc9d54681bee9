"""A composition for the atom search when the input gives no counts.

The atom search (:mod:`phai_cctbx.atom_search`) places a known number of
atoms of known elements.  Where neither the input files nor ``elements=``
give counts (an .hkl or .mtz alone; ``elements="C H N O"``), the cell is
taken to be an organic crystal: one atom heavier than hydrogen per
:data:`VOLUME_PER_ATOM` cubic angstroms of the cell, rounded up, all carbon.
C, N and O scatter alike at low resolution, so a carbon model still finds
the molecule; the right model's R1 is then somewhat higher (O and N fitted
as C).  Named elements heavier than
that (S, Cl, Br, P, ... in :data:`phai_cctbx.atom_search.BOND_LIMITS`) take
one atom each in the asymmetric unit.

An organic crystal may hold a few atoms that scatter far more than carbon
(S, Cl, P: 15-17 electrons against 6), which a carbon model cannot fit.
Where the carbon model does not stand out, the search tries
:func:`heavier_alternatives` in turn: one, two, three of the carbon atoms
of the asymmetric unit as sulfur (or as the heaviest element named), and
keeps the guess whose best model fits |F_obs| best.  Before those it
tries one carbon atom more (:func:`one_atom_more`): the volume's count
falls one short for molecules rich in N and O.

An inorganic cell (a mineral, a salt) holds more atoms per volume than an
organic one and elements of every weight, which no carbon guess fits.
Where no element is named, or a named one is a metal, the search then tries
:func:`unknown_alternatives`: as many atoms as an inorganic cell of that
volume holds, each of unknown element (:data:`phai_cctbx.atom_search.UNKNOWN`),
its scattering power fitted with its site.

Measured on the 41 development structures without their compositions
(``phai.benchmark ... d_min="1.6 2.0" data.composition=False``): phai.solve
solved 34 / 23 at 1.6 / 2.0 A without the guess, 35 / 27 with it (glycine,
oxalic acid, XULDUD01, Nahcolite and Arcanite at 2.0 A gained; two
inorganic cells lost), every "solved" call right; with the heavier
alternatives 35 / 28, and 15 "solved" calls at 2.0 A instead of 10, all
right.
"""

from __future__ import absolute_import, division, print_function

import math

from phai_cctbx.atom_search import (BOND_LIMITS, UNKNOWN, _scattering_weight,
                                    heavy_peak_limit, molecular, whole_positions)

#: Cubic angstroms of an organic crystal per atom heavier than hydrogen:
#: Hofmann's mean atomic volumes in crystals (Acta Cryst. B58, 2002, 489;
#: C 13.9, N 11.8, O 11.4, H 5.1 A^3) for a typical organic molecule, about
#: four carbon atoms in five and 0.7 hydrogen per heavier atom.  Rounding
#: up errs to one atom more, which the search bears better than one fewer.
VOLUME_PER_ATOM = 17.0

#: Light elements, modelled as carbon when no counts are given.
LIGHT = ("B", "C", "N", "O", "F")


def organic_atoms(unit_cell, space_group):
  """Atoms heavier than hydrogen in the asymmetric unit of an organic
  crystal in this cell: the cell's volume over :data:`VOLUME_PER_ATOM`
  and the group's order, rounded up."""
  return max(1, int(math.ceil(
    unit_cell.volume() / VOLUME_PER_ATOM / space_group.order_z() - 1e-6)))


#: Molecules per asymmetric unit (Z') that :func:`formula_units` chooses
#: from: on a special position (an inversion centre, a mirror, a 2-fold
#: axis), one, two, four.
Z_PRIME_CHOICES = (0.5, 1, 2, 4)


#: Volumes (A^3) per atom heavier than hydrogen outside which a number of
#: formula units is not considered (:func:`formula_unit_choices`): dense
#: oxides and fluorides reach 8-10, hydrates and cells of large anions
#: (Cl, Te, Se) 20-26, organic crystals 14-21.
PLAUSIBLE_VOLUME = (7.0, 35.0)

#: Choices of Z for a formula given without it (:func:`formula_unit_choices`).
MOST_FORMULA_UNIT_CHOICES = 2


def formula_unit_choices(counts, unit_cell, space_group, most=MOST_FORMULA_UNIT_CHOICES):
  """Up to ``most`` numbers of formula units per cell (Z) for a formula
  (element -> atoms in one formula unit) given without Z, likeliest first:
  Z' times the group's order, Z' from :data:`Z_PRIME_CHOICES` (and a
  quarter for an inorganic formula, on a site of higher symmetry), whose
  atoms fill whole positions of the group
  (:func:`phai_cctbx.atom_search.whole_positions`) and give a volume per
  atom heavier than hydrogen within
  :data:`PLAUSIBLE_VOLUME`, nearest :data:`VOLUME_PER_ATOM` (in ratio)
  first.  Empty where the formula has no atoms heavier than hydrogen.

  Why two: the volume of an inorganic cell per atom varies from 8 to 26
  A^3.  Over the 62 inorganic cells of the development structures (their
  formulas written in lowest terms), the first choice is the true Z for 54,
  the second for 4 more (PbCl2, TlHgAsS3, Mg2B2O5, a chloride); a wrong Z
  gives the atom search too many or too few atoms, whose models do not
  stand out, so the second is tried where the first's do not."""
  heavy = sum(c for e, c in counts.items() if e not in ("H", "D"))
  if heavy <= 0:
    return []
  order = space_group.order_z()
  volume = unit_cell.volume()
  primes = Z_PRIME_CHOICES if molecular(counts) else (0.25,) + Z_PRIME_CHOICES
  whole = [int(zp * order) for zp in primes if zp * order == int(zp * order)
           and whole_positions(dict((e, c * zp * order) for e, c in counts.items()),
                               space_group)]
  plausible = [z for z in whole
               if PLAUSIBLE_VOLUME[0] <= volume / (z * heavy) <= PLAUSIBLE_VOLUME[1]]
  ranked = sorted(plausible or whole,
                  key=lambda z: abs(math.log(volume / (z * heavy) / VOLUME_PER_ATOM)))
  return ranked[:most]


def formula_units(counts, unit_cell, space_group):
  """Z for a molecular formula (element -> atoms in one formula unit) given
  without it: the first of :func:`formula_unit_choices`.  None where the
  formula is not that of a molecular crystal (a metal or no carbon) or has
  no heavier atoms."""
  if not molecular(counts):
    return None
  choices = formula_unit_choices(counts, unit_cell, space_group, most=1)
  return choices[0] if choices else None


def _named(elements):
  """The element symbols named (``elements``, or None), hydrogen left out."""
  return [e for e in (elements or ()) if e not in ("H", "D")]


def _names_a_metal(named):
  """Whether the elements ``named`` leave the organic ones (:data:`BOND_LIMITS`)."""
  return any(e not in BOND_LIMITS for e in named)


def guess_counts(unit_cell, space_group, elements=None):
  """(counts, how): element -> atoms per unit cell for the atom search, and a
  few words on the guess for the log; (None, why not) where no guess is
  made.

  ``elements``: element symbols known to be present (counts unknown), or
  None.  Elements outside the organic ones (a metal) give the first of
  :func:`unknown_alternatives`: the volume of an inorganic cell says little
  about which atoms it holds, so their scattering is fitted."""
  n = organic_atoms(unit_cell, space_group)
  order = space_group.order_z()
  named = _named(elements)
  if _names_a_metal(named):
    unknown = unknown_alternatives(unit_cell, space_group)
    if not unknown:
      return None, "no atom of unknown element fits the cell"
    return unknown[0], ("the elements %s named without counts: %g atoms of unknown "
                        "element in the asymmetric unit (one per %g A^3), their "
                        "scattering fitted" % (" ".join(named), unknown[0][UNKNOWN] / order,
                                               UNKNOWN_VOLUMES[0]))
  heavy = sorted(set(e for e in named if e not in LIGHT))
  n_carbon = max(1, n - len(heavy))
  counts = dict((e, order) for e in heavy)
  counts["C"] = n_carbon * order
  what = " ".join(["C%d" % n_carbon] + heavy)
  return counts, ("no counts given: an organic crystal assumed, %s in the "
                  "asymmetric unit (one atom heavier than hydrogen per %g A^3, "
                  "light atoms as carbon)" % (what, VOLUME_PER_ATOM))


#: The heavier atom of :func:`heavier_alternatives` where none is named:
#: sulfur scatters like Cl and P (15-17 electrons), the heavier atoms most
#: common in organic crystals.
HEAVIER = "S"
#: Most carbon atoms of the asymmetric unit turned into the heavier atom.
MOST_HEAVIER = 3


def describe(counts, space_group, any_element=True):
  """'C13 S1': atoms per asymmetric unit, carbon first, then heaviest first;
  'X7.5 (any element)' for atoms of unknown element ('X7.5' without
  ``any_element``)."""
  order = space_group.order_z()
  names = sorted(counts, key=lambda e: (e != "C", -_scattering_weight(e)))
  return " ".join("%s%g%s" % (e, counts[e] / order,
                              " (any element)" if e == UNKNOWN and any_element else "")
                  for e in names if counts[e] > 0)


#: Cubic angstroms per atom of an inorganic cell (oxides, oxysalts,
#: halides of the development structures: 9-14; the volume per atom of
#: :func:`unknown_alternatives`).
UNKNOWN_VOLUMES = (11.0, 13.0)


def unknown_alternatives(unit_cell, space_group):
  """Compositions of atoms of unknown element
  (:data:`phai_cctbx.atom_search.UNKNOWN`, each with its scattering power
  fitted), one per volume of :data:`UNKNOWN_VOLUMES`: the cell's volume over
  it, rounded, atoms per cell (a remainder of the group's order on special
  positions).  For an inorganic cell, whose elements a carbon guess cannot
  fit: the search places as many atoms as the cell holds and lets each
  scatter as the data ask (a metal, a light anion).

  Measured on calculated data at 2.0 A (``atom_search.run``, 2048
  placements, seed 0), among the 12 development structures that
  phai.solve left unsolved without a composition: the best model is right
  (r 1.00) for Larnite, Scorzalite, Nontronite, BlueObelisk 1000193 and
  Tarapacaite at 11 A^3 per atom, for Larnite, Nontronite, Urusovite and
  Tarapacaite at 13."""
  out = []
  for v in UNKNOWN_VOLUMES:
    n = int(round(unit_cell.volume() / v))
    if n > 0 and {UNKNOWN: n} not in out:
      out.append({UNKNOWN: n})
  return out


def heavier_alternatives(counts, space_group, elements=None, most=MOST_HEAVIER):
  """Further guesses beside :func:`guess_counts`' ``counts``: 1, 2, ...
  ``most`` of its carbon atoms per asymmetric unit turned into the heaviest
  named element outside :data:`LIGHT` (:data:`HEAVIER` where no element is
  named), keeping at least two carbon atoms.  None where the named
  elements are all light (``elements="C H N O"``): nothing heavier is
  there to place."""
  named = _named(elements)
  heavy = [e for e in named if e not in LIGHT]
  if named and not heavy:
    return []
  element = max(heavy, key=_scattering_weight) if heavy else HEAVIER
  order = space_group.order_z()
  carbon = int(round(counts.get("C", 0) / order))
  out = []
  for k in range(1, most + 1):
    if carbon - k < 2:
      break
    alt = dict(counts)
    alt["C"] = (carbon - k) * order
    alt[element] = alt.get(element, 0) + k * order
    out.append(alt)
  return out


def one_atom_more(counts, space_group):
  """``counts`` (an organic guess of :func:`guess_counts`) with one carbon
  atom more in the asymmetric unit.

  Why: molecules rich in N and O (amides, acids, hydroxyl groups) pack
  more atoms per volume than :data:`VOLUME_PER_ATOM`.  Over the 97
  molecular cells of the structures in ``../shared/data`` and the PyXtal
  set (``regression/build_pyxtal_set.py``) the volume's guess is the true
  count of atoms heavier than hydrogen in 39, above it in 41 and below it
  in 17 (by one atom in 14).  A model one atom short fits little better
  than a wrong one; with the atom more it stands out.  The search alone
  (``atom_search.run``, 2048 placements, seed 0) at 2.0 A on cells of
  ``../shared/data/structures/p21c_large`` whose guess is one short:
  paracetamol (HXACAN10, HXACAN12) C10 R1 0.153 and 0.144 (r 0.99), C11
  0.097 and 0.096 (r 1.00); aspirin (ACSALA35) C12 0.117, C13 0.112;
  glycine (GLYCIN64) C4 0.130, C5 0.118."""
  order = space_group.order_z()
  out = dict(counts)
  out["C"] = out.get("C", 0) + order
  return out


def guessed_alternatives(counts, unit_cell, space_group, elements=None):
  """The guesses tried in turn after :func:`guess_counts`' ``counts`` where
  its models do not stand out: for an organic guess, :func:`one_atom_more`
  and :func:`heavier_alternatives`, then, where no element is named or one
  outside the organic ones is, the :func:`unknown_alternatives` other than
  ``counts``."""
  out = [] if UNKNOWN in counts else \
    [one_atom_more(counts, space_group)] + heavier_alternatives(counts, space_group, elements)
  named = _named(elements)
  if not named or _names_a_metal(named):
    out += [c for c in unknown_alternatives(unit_cell, space_group) if c != counts]
  return out


def given_atoms(counts, space_group):
  """Atoms heavier than hydrogen in the asymmetric unit of a composition
  (element -> atoms per cell), rounded up (atoms on special positions
  count whole)."""
  cell = sum(c for e, c in counts.items() if e not in ("H", "D"))
  return int(math.ceil(cell / space_group.order_z() - 1e-6))


#: Heavy atoms of unknown element per asymmetric unit that
#: :func:`heavy_unknown_guesses` searches for first, in turn.
HEAVY_UNKNOWN_ATOMS = (1, 2)
#: ... keeping at least this many light atoms in the asymmetric unit.
MIN_LIGHT_ATOMS = 2


def heavy_unknown_guesses(unit_cell, space_group, reflections, elements=None,
                          atoms=None):
  """[(heavy, completion)]: counts per cell of one, then two
  (:data:`HEAVY_UNKNOWN_ATOMS`) heavy atoms of unknown element
  (:data:`phai_cctbx.atom_search.UNKNOWN`, their scattering fitted) in the
  asymmetric unit, to be searched for alone, and of the whole asymmetric
  unit to place from the peaks of their models' maps: those heavy atoms
  and carbon for the rest of ``atoms`` (atoms heavier than hydrogen in the
  asymmetric unit, from a given composition, :func:`given_atoms`; None:
  :func:`organic_atoms`), at most
  :func:`phai_cctbx.atom_search.heavy_peak_limit` of ``reflections`` in
  all.  Empty where the named elements are all light (``elements="C H N
  O"``: no heavy atom to find).

  Why: the classic route for a cell with a few heavy atoms (a metal, As,
  Br, Pb), which a carbon model cannot fit and whose asymmetric unit is
  too large for atoms of unknown element throughout.  On calculated data
  at 2.0 A (``atom_search.run`` of the heavy atoms, then
  ``atom_search.from_peaks``): Vauquelinite (Pb2Cu(CrO4)(PO4)(OH), 15
  atoms, 97 reflections) two such atoms give R1 0.312 and r 0.99, and the
  completion from their map C10 X2, R1 0.096, r 1.000 (one atom: R1
  0.142, r 0.24); COD 2004924 (a Cu complex, 21 atoms) C18 X1, R1 0.088,
  r 0.998."""
  named = _named(elements)
  if named and all(e in LIGHT for e in named):
    return []
  order = space_group.order_z()
  if atoms is None:
    atoms = organic_atoms(unit_cell, space_group)
  n = min(atoms, heavy_peak_limit(reflections))
  out = []
  for k in HEAVY_UNKNOWN_ATOMS:
    if n - k < MIN_LIGHT_ATOMS:
      break
    heavy = {UNKNOWN: k * order}
    out.append((heavy, dict(heavy, C=(n - k) * order)))
  return out
