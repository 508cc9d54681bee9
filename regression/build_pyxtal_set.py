"""Write CIFs of the small P2_1/c (and supergroup) cells in PyXtal's
structure databases, as a test set beside ../shared/data.

PyXtal (https://github.com/MaterSim/PyXtal) ships two ASE databases of
molecular crystals from the CSD (``database/test.db``, ``database/mech.db``)
and a few CIFs.  This script takes from them the entries of space groups
C2/m, P2_1/c, C2/c, Pbcn, Pbca and Pnma with every cell edge up to
``max_edge`` (A), leaves out those whose CSD code names a file of
``--exclude`` folders (the development structures), finds each entry's
symmetry operations in its own cell (spglib) and writes its asymmetric unit
(all atoms, hydrogen included, U 0.025 A^2) as ``pyxtal_<CODE>.cif``.

    pip download --no-deps pyxtal -d wheels && pip install ase spglib
    python regression/build_pyxtal_set.py wheels/pyxtal-*.whl pyxtal_set \\
      --exclude ../shared/data/structures/p21c_small ../shared/data/structures/p21c_large \\
      ../shared/data/structures/supergroups
    phai.benchmark pyxtal_set d_min="1.6 2.0" dual_space.enabled=False charge_flipping.enabled=False

Needs ase and spglib (not dependencies of phai_cctbx).
"""
from __future__ import absolute_import, division, print_function

import argparse
import os
import tempfile
import zipfile

import numpy as np

from cctbx import crystal, sgtbx, uctbx, xray

GROUPS = (12, 14, 15, 60, 61, 62)
DATABASES = ("pyxtal/database/test.db", "pyxtal/database/mech.db")
#: CIFs of the wheel that hold CSD determinations (not generated or
#: computed structures).
CIFS = ("pyxtal/database/cifs/anthracene.cif", "pyxtal/database/cifs/naphthalene.cif")


def space_group_of(atoms, symprec):
  """cctbx space group of an ASE ``atoms`` in its own cell (spglib), and
  spglib's group number; (None, None) where spglib finds none."""
  import spglib
  ds = spglib.get_symmetry_dataset(
    (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers), symprec=symprec)
  if ds is None:
    return None, None
  group = sgtbx.space_group()
  for r, t in zip(ds.rotations, ds.translations):
    group.expand_smx(sgtbx.rt_mx(
      sgtbx.rot_mx(tuple(int(x) for x in np.asarray(r).flatten())),
      sgtbx.tr_vec(tuple(int(round(x * 24)) for x in t), 24).new_denominator(sgtbx.sg_t_den)))
  return group, ds.number


def asymmetric_unit(atoms, group, tolerance=0.1):
  """One atom of each symmetry orbit of ``atoms`` (indices)."""
  frac = atoms.get_scaled_positions()
  cell = np.asarray(atoms.cell[:])
  kept, covered = [], np.zeros(len(atoms), dtype=bool)
  for i in range(len(atoms)):
    if covered[i]:
      continue
    kept.append(i)
    for op in group.all_ops():
      d = frac - np.array(op * tuple(frac[i]))
      d -= np.round(d)
      covered |= np.linalg.norm(d @ cell, axis=1) < tolerance
  return kept


def structure_of(atoms, group):
  """The cctbx xray.structure of ``atoms`` under ``group``, or None where
  its asymmetric unit does not expand back to every atom."""
  symmetry = crystal.symmetry(uctbx.unit_cell(tuple(atoms.cell.cellpar())), space_group=group)
  xs = xray.structure(crystal_symmetry=symmetry)
  symbols = atoms.get_chemical_symbols()
  frac = atoms.get_scaled_positions()
  for n, i in enumerate(asymmetric_unit(atoms, group)):
    xs.add_scatterer(xray.scatterer(label="%s%d" % (symbols[i], n + 1), site=tuple(frac[i]),
                                    u=0.025, scattering_type=symbols[i]))
  return xs if xs.expand_to_p1().scatterers().size() == len(atoms) else None


def excluded_codes(folders):
  """CSD codes (the last ``_`` field of a file name) of the files in ``folders``."""
  out = set()
  for folder in folders:
    for name in os.listdir(folder):
      out.add(os.path.splitext(name)[0].split("_")[-1].upper())
  return out


def database_structures(path, max_edge, exclude):
  """(code, xray.structure or None, why) of a database's wanted entries."""
  from ase.db import connect
  for row in connect(path).select():
    kv = row.key_value_pairs
    atoms = row.toatoms()
    if kv.get("spg_num") not in GROUPS or max(atoms.cell.cellpar()[:3]) > max_edge:
      continue
    code = str(kv.get("csd_code"))
    if code.upper() in exclude:
      continue
    for symprec in (1e-3, 1e-2):
      group, number = space_group_of(atoms, symprec)
      if number == kv["spg_num"]:
        break
    if number != kv["spg_num"]:
      yield code, None, "spglib finds group %s, the database says %s" % (number, kv["spg_num"])
      continue
    xs = structure_of(atoms, group)
    yield code, xs, None if xs is not None else "asymmetric unit does not expand to the cell"


def main(args=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("wheel", help="a PyXtal wheel (pip download --no-deps pyxtal)")
  p.add_argument("out_dir")
  p.add_argument("--max-edge", type=float, default=14.2)
  p.add_argument("--exclude", nargs="*", default=[], help="folders of CIFs to leave out")
  a = p.parse_args(args)
  exclude = excluded_codes(a.exclude)
  os.makedirs(a.out_dir, exist_ok=True)
  written = 0
  with tempfile.TemporaryDirectory() as tmp:
    with zipfile.ZipFile(a.wheel) as z:
      z.extractall(tmp, [n for n in z.namelist() if n in DATABASES + CIFS])
    for db in DATABASES:
      for code, xs, why in database_structures(os.path.join(tmp, db), a.max_edge, exclude):
        if xs is None:
          print("skipped %s: %s" % (code, why))
          continue
        with open(os.path.join(a.out_dir, "pyxtal_%s.cif" % code), "w") as f:
          xs.as_cif_simple(out=f, data_name=code)
        written += 1
    for cif in CIFS:
      name = "pyxcif_" + os.path.basename(cif)
      with open(os.path.join(tmp, cif)) as src, open(os.path.join(a.out_dir, name), "w") as dst:
        dst.write(src.read())
      written += 1
  print("%d CIFs in %s" % (written, a.out_dir))


if __name__ == "__main__":
  main()
