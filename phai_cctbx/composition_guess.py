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

Measured on the 41 development structures without their compositions
(``phai.benchmark ... d_min="1.6 2.0" data.composition=False``): phai.solve
solved 34 / 23 at 1.6 / 2.0 A without the guess, 35 / 27 with it (glycine,
oxalic acid, XULDUD01, Nahcolite and Arcanite at 2.0 A gained; two
inorganic cells lost), every "solved" call right.
"""

from __future__ import absolute_import, division, print_function

import math

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


def guess_counts(unit_cell, space_group, elements=None):
  """(counts, how): element -> atoms per unit cell for the atom search, and a
  few words on the guess for the log; (None, why not) where no guess is
  made.

  ``elements``: element symbols known to be present (counts unknown), or
  None.  Elements outside the organic ones (a metal) give no guess: the
  volume of an inorganic cell says little about its atoms."""
  from phai_cctbx.atom_search import BOND_LIMITS
  n = organic_atoms(unit_cell, space_group)
  order = space_group.order_z()
  named = [e for e in (elements or ()) if e not in ("H", "D")]
  if any(e not in BOND_LIMITS for e in named):
    return None, ("the elements %s are not all those of an organic crystal, "
                  "whose atom count the cell's volume would give"
                  % " ".join(named))
  heavy = sorted(set(e for e in named if e not in LIGHT))
  n_carbon = max(1, n - len(heavy))
  counts = dict((e, order) for e in heavy)
  counts["C"] = n_carbon * order
  what = " ".join(["C%d" % n_carbon] + heavy)
  return counts, ("no counts given: an organic crystal assumed, %s in the "
                  "asymmetric unit (one atom heavier than hydrogen per %g A^3, "
                  "light atoms as carbon)" % (what, VOLUME_PER_ATOM))
