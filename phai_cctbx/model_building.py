"""A starting model from a phased map: peaks become atoms with elements.

What a direct-methods or dual-space program hands its user: atoms, not only
phases.  The map (an E-map by default, see :data:`DEFAULT_MAP_TYPE`) is
searched for peaks with cctbx's map machinery (``maptbx`` peak search and
cluster analysis, which places peaks on exact special positions and rejects
peaks closer than a minimum distance to each other or to their own symmetry
mates).  Peak heights are turned into elements by comparing them with the
carbon level of the map, using expected height ratios computed from the
scattering factors over the reflections actually in the map.  Bonds come from
cctbx's covalent-radii pair table; bonded atoms form fragments, and each
fragment is moved by symmetry to be contiguous, as a user expects to see it.

Hydrogen atoms are not placed.

The public entry points are :func:`parse_elements` and
:func:`build_starting_model`; the model is a :class:`StartingModel`.
"""
from __future__ import annotations

import math
import re
import sys

from cctbx import crystal, maptbx, xray
from cctbx.array_family import flex
from cctbx.eltbx import tiny_pse, xray_scattering
from libtbx.utils import Sorry

# E-map or F-map: measured on 25 development structures with true phases
# (python tests/test_model_building.py) both place all 280 non-H atoms within
# 0.3 A at 1.0 A (elements right 242 vs 246); at 2.0 A the E-map places
# 114/280 and the F-map 111/280.  The E-map is the default because its
# element calibration does not depend on the unknown displacement parameters.
DEFAULT_MAP_TYPE = "E"

# Volume per non-hydrogen atom in organic crystals (Kempster & Lipson's
# 18 A^3 rule, which includes the hydrogens' share).
VOLUME_PER_NON_H_ATOM = 18.0

# Elements considered without a formula: carbon, nitrogen, oxygen for peaks
# near the carbon level, and for peaks well above it the heavier elements
# most often met in organic and metal-organic crystals.
LIGHT_ELEMENTS = ("C", "N", "O")
HEAVY_ELEMENTS = (
  "P", "S", "Cl", "K", "Ca", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Br", "Mo",
  "Ru", "Pd", "Ag", "Sn", "I", "Pt", "Au", "Hg", "Pb")

# How common the default heavier elements are in organic and metal-organic
# crystals (relative; the others count 0.02).
HEAVY_PRIORS = {"S": 0.3, "Cl": 0.25, "P": 0.1, "Br": 0.1, "I": 0.05,
                "Fe": 0.05, "Cu": 0.05}

# Without a composition, a peak is called heavier than oxygen only when its
# height ratio to the carbon level is at least this factor times that of
# oxygen: organic light elements are preferred, and a heavy atom is named only
# when the map demands it (in an E-map S, P and Cl peak 2.5-3 times higher
# than O; a misplaced or merged light-atom peak seldom reaches twice O).
HEAVY_MARGIN = 2.0

# Peaks lower than this fraction of the lightest candidate element's
# expected height are not atoms.
ACCEPT_FRACTION = 0.5

# Spread of log(peak height / expected height) for light atoms: thermal
# motion differs from atom to atom.
LOG_HEIGHT_SPREAD = 0.15

# A map whose highest peaks are not this much above the following ones has
# no clear atoms (wrong phases).
MIN_CLARITY = 1.25

# Weak peaks (below this fraction of the carbon level) with no bonded
# neighbour are dropped as noise.
ISOLATED_WEAK_FRACTION = 0.75


# ---------------------------------------------------------------------------
# Elements

class Composition(object):
  """Elements the crystal contains, optionally with counts.

  ``symbols``: element symbols in the order given (SHELX's SFAC order);
  ``counts``: dict symbol -> count, or None when no counts were given;
  ``per_cell``: True when the counts are the unit-cell content (SHELX UNIT,
  or a CIF formula times Z), False for a formula unit of unknown number;
  ``source``: where it came from, for the log (e.g. "epoxide.ins (SFAC/UNIT)").
  """

  def __init__(self, symbols, counts=None, per_cell=False, source=None):
    self.symbols = tuple(symbols)
    self.counts = counts
    self.per_cell = bool(per_cell and counts is not None)
    self.source = source

  def with_source(self, source, per_cell=None):
    """A copy with another source (and optionally per_cell)."""
    return Composition(self.symbols, None if self.counts is None
                       else dict(self.counts),
                       self.per_cell if per_cell is None else per_cell, source)

  def times(self, factor):
    """The counts multiplied by ``factor`` (a formula times Z: the cell)."""
    if self.counts is None:
      return self
    return Composition(self.symbols, dict(
      (e, c * factor) for e, c in self.counts.items()), True, self.source)

  def non_hydrogen(self):
    return tuple(e for e in self.symbols if e not in ("H", "D"))

  def __str__(self):
    if self.counts is None:
      return " ".join(self.symbols)
    return " ".join("%s%s" % (e, _format_count(self.counts[e]))
                    for e in self.symbols)

  def __repr__(self):
    return "Composition(%r)" % str(self)


def _format_count(c):
  if c == int(c):
    return "%d" % int(c)
  return "%g" % c


_TOKEN = re.compile(r"([A-Z][a-z]?)(\d+(?:\.\d*)?|\.\d+)?")


def _standard_symbol(symbol):
  """The element symbol as cctbx knows it, or None."""
  if symbol == "D":
    return "D"
  try:
    tiny_pse.table(symbol)
  except RuntimeError:
    return None
  std = xray_scattering.get_standard_label(
    label=symbol, exact=True, optional=True)
  if std is None:
    return None
  return std


def parse_elements(text):
  """Parse an element list or formula into a :class:`Composition`.

  Accepts ``"C H N O S Cl"`` (elements only), SHELX-like ``"C6 H5 N O2"``
  (counts, an element without a count counting 1) and compact formulas such
  as ``"C6H5NO2"``; commas are allowed as separators.  Raises
  :class:`libtbx.utils.Sorry` with a one-line message when the text does not
  parse.
  """
  if text is None:
    return None
  if isinstance(text, Composition):
    return text
  original = str(text)
  words = original.replace(",", " ").split()
  if not words:
    raise Sorry("elements=: empty element list.")
  symbols = []
  counts = {}
  any_count = False
  for word in words:
    pos = 0
    if not word[:1].isalpha():
      raise Sorry('elements="%s": cannot read "%s" (expected element symbols '
                  'such as "C H N O" or a formula such as "C6 H5 N O2").'
                  % (original, word))
    for m in _TOKEN.finditer(word):
      if m.start() != pos:
        break
      pos = m.end()
      symbol, count = m.group(1), m.group(2)
      std = _standard_symbol(symbol)
      if std is None:
        raise Sorry('elements="%s": "%s" is not an element symbol.'
                    % (original, symbol))
      c = 1.0
      if count is not None:
        any_count = True
        c = float(count)
        if c <= 0:
          raise Sorry('elements="%s": count of %s must be positive.'
                      % (original, symbol))
      if std in counts:
        counts[std] += c
      else:
        symbols.append(std)
        counts[std] = c
    if pos != len(word):
      raise Sorry('elements="%s": cannot read "%s" (expected element symbols '
                  'such as "C H N O" or a formula such as "C6 H5 N O2").'
                  % (original, word))
  if not [e for e in symbols if e not in ("H", "D")]:
    raise Sorry('elements="%s": no element heavier than hydrogen.' % original)
  return Composition(symbols, counts if any_count else None)


# ---------------------------------------------------------------------------
# The model

class PeakAtom(object):
  """One atom of the starting model.

  ``site`` is fractional; ``height`` the map value at the peak in units of
  the map's r.m.s.; ``ratio`` the height over the carbon level;
  ``multiplicity`` the number of sites in the cell (smaller on a special
  position); ``fragment`` the index of its fragment.
  """

  def __init__(self, label, element, site, height, ratio, multiplicity,
               fragment=None):
    self.label = label
    self.element = element
    self.site = tuple(site)
    self.height = height
    self.ratio = ratio
    self.multiplicity = multiplicity
    self.fragment = fragment

  def __repr__(self):
    return "PeakAtom(%s %s %.4f %.4f %.4f h=%.2f)" % (
      (self.label, self.element) + self.site + (self.height,))


class StartingModel(object):
  """Atoms placed in a phased map.

  ``xray_structure``: cctbx xray.structure (original space group and
  setting, isotropic U, no hydrogens); ``atoms``: list of :class:`PeakAtom`
  in the order of the structure's scatterers; ``fragments``: lists of atom
  labels bonded together; ``warnings``: list of str; ``map_type``: "E" or
  "F"; ``carbon_level``: the map height taken for a carbon atom (r.m.s.
  units); ``composition``: the :class:`Composition` used, or None.
  """

  #: Where the atoms came from: the map's peaks, or an atom model of the
  #: search (:func:`model_from_atoms`).
  from_atom_model = False

  def __init__(self, xray_structure, atoms, fragments, warnings, map_type,
               carbon_level, composition, bonds=(), notes=()):
    self.notes = list(notes)
    self.xray_structure = xray_structure
    self.atoms = atoms
    self.fragments = fragments
    self.warnings = warnings
    self.map_type = map_type
    self.carbon_level = carbon_level
    self.composition = composition
    self.bonds = list(bonds)

  def is_empty(self):
    return len(self.atoms) == 0

  def source(self):
    """Where the atoms came from, in a few words."""
    if self.from_atom_model:
      return "the atom model whose F_calc gave the phases; heights from the %s-map" % (
        self.map_type)
    return "peaks of the %s-map of its phases" % self.map_type

  def crystal_symmetry(self):
    return self.xray_structure.crystal_symmetry()

  def unit_cell_content(self):
    """Element -> number of atoms in the unit cell (non-hydrogen only)."""
    return self.xray_structure.unit_cell_content()

  def show(self, log=None):
    """Print the atoms, their peak heights, elements and the fragments."""
    if log is None:
      log = sys.stdout
    print("Starting model from the %s (hydrogen atoms not placed)" % (
      "atom model of the search" if self.from_atom_model else "%s-map" % self.map_type),
      file=log)
    if self.carbon_level is not None:
      print("  carbon level: %.2f r.m.s." % self.carbon_level, file=log)
    if self.composition is not None:
      print("  elements: %s%s" % (
        self.composition, " (unit cell)" if self.composition.per_cell else ""),
        file=log)
    for n in self.notes:
      print("  %s" % n, file=log)
    for w in self.warnings:
      print("  WARNING: %s" % w, file=log)
    if self.is_empty():
      print("  no atoms placed", file=log)
      return
    print("  %-6s %-3s %9s %9s %9s %8s %7s %5s %4s" % (
      "atom", "el", "x", "y", "z", "height", "h/C", "mult", "frag"), file=log)
    for a in self.atoms:
      print("  %-6s %-3s %9.5f %9.5f %9.5f %8.2f %7.2f %5d %4s" % (
        (a.label, a.element) + a.site
        + (a.height, a.ratio, a.multiplicity,
           "" if a.fragment is None else a.fragment + 1)), file=log)
    content = self.unit_cell_content()
    print("  unit-cell content (non-H): %s" % " ".join(
      "%s%s" % (e, _format_count(round(content[e], 2)))
      for e in sorted(content, key=_hill_key)), file=log)
    print("  fragments (%d):" % len(self.fragments), file=log)
    for i, frag in enumerate(self.fragments):
      formula = _fragment_formula([a for a in self.atoms if a.label in frag])
      print("    %d: %s (%d atoms: %s)" % (
        i + 1, formula, len(frag), " ".join(frag)), file=log)


def _hill_key(e):
  return (0 if e == "C" else 1 if e == "H" else 2, e)


def _fragment_formula(atoms):
  counts = {}
  for a in atoms:
    counts[a.element] = counts.get(a.element, 0) + 1
  return "".join("%s%s" % (e, "" if counts[e] == 1 else counts[e])
                 for e in sorted(counts, key=_hill_key))


# ---------------------------------------------------------------------------
# Map and peaks

def map_coefficients(f_obs, phases_deg, map_type=DEFAULT_MAP_TYPE):
  """Complex map coefficients (E or F amplitudes with the given phases).

  Returns (coefficients, normalisations): the normalisation N(h) such that
  E = F / N, computed in resolution shells by cctbx's quasi-normalisation.
  """
  f, p = f_obs.common_sets(phases_deg)
  if f.size() == 0:
    raise Sorry("No reflection has both an amplitude and a phase.")
  f = f.select(f.data() > 0)
  p = p.common_set(f)
  f = f.array(data=f.data())  # plain amplitudes, sigmas not needed
  f.set_observation_type_xray_amplitude()
  norms = amplitude_normalisations(f)
  if map_type == "E":
    amplitudes = f.customized_copy(data=f.data() / norms.data())
  elif map_type == "F":
    amplitudes = f
  else:
    raise Sorry("map_type must be E or F, not %s" % map_type)
  coeffs = amplitudes.phase_transfer(phase_source=p, deg=True)
  return coeffs, norms


def amplitude_normalisations(f):
  """N(h) with E = F / N: the r.m.s. of F / sqrt(epsilon) in resolution shells.

  Like cctbx's ``amplitude_quasi_normalisations`` (shell means interpolated
  in d*), but where the linear interpolation runs to zero or below at the
  ends of the range, the shell's own mean is used.
  """
  n_bins = max(1, min(20, f.size() // 40))
  f.setup_binner(n_bins=n_bins)
  binner = f.binner()
  eps = f.epsilons().data().as_double()
  f_sq = flex.pow2(f.data()) / eps
  means = flex.double()
  for i_bin in binner.range_used():
    sel = binner.selection(i_bin)
    means.append(flex.mean(f_sq.select(sel)) if sel.count(True) else 0)
  positive = means.select(means > 0)
  floor = flex.min(positive) if positive.size() else 1.0
  means = flex.double([max(m, floor) for m in means])
  interp = binner.interpolate(means, 1)
  for i_bin, m in zip(binner.range_used(), means):
    sel = binner.selection(i_bin) & (interp <= 0)
    interp.set_selected(sel, m)
  return f.customized_copy(data=flex.sqrt(interp), sigmas=None)


def expected_height_ratios(coeffs, norms, elements, map_type):
  """Expected peak height of each element relative to carbon.

  For true phases an atom's own contribution to the coefficient of a
  reflection is f(s) T(s) / N(s) in an E-map and f(s) T(s) in an F-map.
  Taking carbon as the typical atom, T(s) ~ N(s) / f_C(s); so the peak of
  element X over the peak of carbon is sum f_X w / sum f_C w over the
  reflections in the map, with w = 1 / f_C (E-map) or N / f_C (F-map).
  """
  stol = coeffs.sin_theta_over_lambda_sq().data()
  stol = flex.sqrt(stol)
  f_c = _form_factor("C", stol)
  if map_type == "E":
    w = 1.0 / f_c
  else:
    w = norms.data() / f_c
  ref = flex.sum(f_c * w)
  result = {}
  for e in elements:
    result[e] = flex.sum(_form_factor(e, stol) * w) / ref
  return result


def _form_factor(element, stol):
  if element == "D":
    element = "H"
  g = xray_scattering.wk1995(element, True).fetch()
  return flex.double([g.at_stol(s) for s in stol])


def sigma_scaled_map(coeffs, resolution_factor=0.25):
  """The map of ``coeffs`` (cctbx fft_map, the space group's symmetry) in
  units of its r.m.s."""
  fft_map = coeffs.fft_map(resolution_factor=resolution_factor,
                           symmetry_flags=maptbx.use_space_group_symmetry)
  fft_map.apply_sigma_scaling()
  return fft_map


def find_peaks(coeffs, min_distance=1.0, max_peaks=200,
               resolution_factor=0.25):
  """Peaks of the sigma-scaled map, one per symmetry-unique site.

  Returns a list of (site_frac, height) in decreasing height; peaks on or
  near special positions are moved onto them by cctbx; peaks closer than
  ``min_distance`` to a higher one (or to their own symmetry mates, beyond
  a special position) are rejected.
  """
  fft_map = sigma_scaled_map(coeffs, resolution_factor)
  params = maptbx.peak_search_parameters(
    peak_search_level=1,
    max_peaks=max_peaks * 5,
    interpolate=True,
    min_distance_sym_equiv=0.5,
    general_positions_only=False,
    min_cross_distance=min_distance,
    max_clusters=max_peaks)
  clusters = fft_map.peak_search(parameters=params, verify_symmetry=False)
  clusters = clusters.all(max_clusters=max_peaks)
  return list(zip(clusters.sites(), clusters.heights()))


# ---------------------------------------------------------------------------
# Elements from heights

def _candidate_elements(composition):
  if composition is None:
    return LIGHT_ELEMENTS, HEAVY_ELEMENTS
  non_h = composition.non_hydrogen()
  light = tuple(e for e in non_h if tiny_pse.table(e).atomic_number() <= 9)
  heavy = tuple(e for e in non_h if tiny_pse.table(e).atomic_number() > 9)
  return light, heavy


def _closest(ratio, ratios, elements, priors=None):
  """The element whose expected height ratio fits best.

  Normal likelihood of log(ratio / expected) (spread
  :data:`LOG_HEIGHT_SPREAD`) times the prior weight (equal if not given).
  """
  best, best_v = None, None
  for e in elements:
    x = math.log(max(ratio, 1e-6) / ratios[e]) / LOG_HEIGHT_SPREAD
    v = -0.5 * x * x
    if priors is not None:
      v += math.log(priors.get(e, 0.02))
    if best_v is None or v > best_v:
      best, best_v = e, v
  return best


def _expected_atoms_per_asu(crystal_symmetry):
  return crystal_symmetry.unit_cell().volume() / (
    VOLUME_PER_NON_H_ATOM * crystal_symmetry.space_group().order_z())


def _formula_units_per_asu(composition, crystal_symmetry):
  """Formula units per asymmetric unit (or None without counts).

  The unit-cell content (``per_cell``) is 1 / (the space group's order) of
  an asymmetric unit; a formula unit of unknown number, the multiple that
  fits the 18 A^3 rule.
  """
  if composition is None or composition.counts is None:
    return None
  n_formula = sum(composition.counts[e] for e in composition.non_hydrogen())
  n_exp = _expected_atoms_per_asu(crystal_symmetry)
  if composition.per_cell:
    k = 1.0 / crystal_symmetry.space_group().order_z()
    # A cell content far from what the cell volume holds (a placeholder
    # UNIT 1 1 1) is taken as proportions only.
    if 1 / 3. <= k * n_formula / n_exp <= 3:
      return k
  choices = (0.25, 0.5, 1, 2, 3, 4)
  return min(choices, key=lambda k: abs(math.log(k * n_formula / n_exp)))


def _light_weights(light, composition):
  """Prior weight of each light element: formula counts, else a typical
  organic mix."""
  if composition is not None and composition.counts is not None:
    return dict((e, composition.counts[e]) for e in light)
  typical = {"C": 0.6, "N": 0.15, "O": 0.25}
  return dict((e, typical.get(e, 0.1)) for e in light)


def _carbon_level(heights, light, ratios, weights):
  """Map height of a carbon atom from the light-atom peaks.

  The median height of the light-atom peaks (the peaks not far above the
  median of all) belongs to the weighted-median light element (carbon in an
  organic crystal); divided by that element's expected ratio it gives the
  carbon level.
  """
  med = _median(heights)
  light_heights = [h for h in heights if h < 2.0 * med] or heights
  by_ratio = sorted(light, key=lambda e: ratios[e])
  total = sum(weights[e] for e in by_ratio)
  acc = 0.0
  median_element = by_ratio[-1]
  for e in by_ratio:
    acc += weights[e]
    if acc >= 0.5 * total:
      median_element = e
      break
  return _median(light_heights) / ratios[median_element]


def _median(values):
  v = sorted(values)
  n = len(v)
  if n == 0:
    return 0.0
  if n % 2:
    return v[n // 2]
  return 0.5 * (v[n // 2 - 1] + v[n // 2])


# ---------------------------------------------------------------------------
# Bonds and fragments

def _bonds(xs, tolerance=0.45):
  """Bonded pairs (i, j, rt_mx_ji, distance) from cctbx's covalent radii."""
  table = crystal.pair_asu_table(
    asu_mappings=xs.asu_mappings(buffer_thickness=3.5))
  types = flex.std_string(
    [sc.scattering_type for sc in xs.scatterers()])
  table.add_covalent_pairs(scattering_types=types, distance_cutoff=3.5,
                           tolerance=tolerance)
  sym_table = table.extract_pair_sym_table(skip_j_seq_less_than_i_seq=False)
  uc = xs.unit_cell()
  sites = xs.sites_frac()
  result = []
  for i, pairs in enumerate(sym_table):
    for j, ops in pairs.items():
      for op in ops:
        d = uc.distance(sites[i], op * sites[j])
        result.append((i, j, op, d))
  return result


def _fragments_and_moves(xs, bonds):
  """Connected fragments and a symmetry operation per atom to join them.

  Breadth-first from the strongest atom of each fragment: an atom reached
  from atom i (moved by op_i) through the bond (i, j, rt_mx_ji) is moved by
  op_i * rt_mx_ji, so that bonded atoms sit next to each other.
  """
  n = xs.scatterers().size()
  neighbours = [[] for _ in range(n)]
  for i, j, op, d in bonds:
    neighbours[i].append((j, op))
  identity = xs.space_group()(0)
  fragment_of = [None] * n
  moves = [None] * n
  fragments = []
  for start in range(n):
    if fragment_of[start] is not None:
      continue
    k = len(fragments)
    order = [start]
    fragment_of[start] = k
    moves[start] = identity
    queue = [start]
    while queue:
      i = queue.pop(0)
      for j, op in sorted(neighbours[i], key=lambda t: t[0]):
        if fragment_of[j] is not None:
          continue
        fragment_of[j] = k
        moves[j] = moves[i].multiply(op)
        order.append(j)
        queue.append(j)
    fragments.append(order)
  return fragments, moves


# ---------------------------------------------------------------------------
# The builder

def build_starting_model(f_obs, phases_deg, elements=None, log=None,
                         map_type=DEFAULT_MAP_TYPE, u_iso=0.05,
                         min_distance=1.0, max_atoms=None):
  """Atoms from the map of ``f_obs`` with ``phases_deg``.

  f_obs: amplitudes (or intensities, converted) with crystal symmetry, in
  the original space group and setting; phases_deg: a miller array of
  phases in degrees on (a superset or subset of) the same indices.
  elements: None (C/N/O by peak height, heavier elements for peaks well
  above the carbon level), a string for :func:`parse_elements`, or a
  :class:`Composition`.  Returns a :class:`StartingModel`; problems (no clear
  peaks) are reported in its ``warnings``, never raised.
  """
  composition = parse_elements(elements)
  if f_obs.crystal_symmetry() is None or f_obs.space_group() is None \
      or f_obs.unit_cell() is None:
    raise Sorry("Building a model needs the crystal symmetry of the data.")
  if f_obs.is_xray_intensity_array():
    f_obs = f_obs.f_sq_as_f()
  if f_obs.is_complex_array():
    f_obs = abs(f_obs)
  if phases_deg.is_complex_array():
    phases_deg = phases_deg.phases(deg=True)
  cs = f_obs.crystal_symmetry()
  warnings = []

  coeffs, norms = map_coefficients(f_obs, phases_deg, map_type=map_type)
  light, heavy = _candidate_elements(composition)
  n_exp = _expected_atoms_per_asu(cs)
  k_formula = _formula_units_per_asu(composition, cs)
  if max_atoms is None:
    n_cap = n_exp
    if k_formula is not None:
      n_cap = max(n_cap, k_formula * sum(
        composition.counts[e] for e in composition.non_hydrogen()))
    max_atoms = int(math.ceil(1.5 * n_cap)) + 4
  peaks = find_peaks(coeffs, min_distance=min_distance,
                     max_peaks=3 * max_atoms)
  ratios = expected_height_ratios(
    coeffs, norms, set(light) | set(heavy) | {"C"}, map_type)

  empty = lambda w: StartingModel(
    xray.structure(crystal.special_position_settings(cs)), [], [],
    warnings + [w], map_type, None, composition)
  if not peaks or peaks[0][1] <= 0:
    return _finish(empty("no peaks in the map; no atoms placed."), log)

  if not light:
    light = (min(heavy, key=lambda e: ratios[e]),)
    heavy = tuple(e for e in heavy if e not in light)
  weights = _light_weights(light, composition)
  heights = [h for s, h in peaks[:max(int(round(n_exp)), 3)]]
  h_c = _carbon_level(heights, light, ratios, weights)
  cutoff = ACCEPT_FRACTION * min(ratios[e] for e in light) * h_c
  accepted = [(s, h) for s, h in peaks if h >= cutoff][:max_atoms]
  # Once more from the accepted peaks only.
  h_c = _carbon_level([h for s, h in accepted], light, ratios, weights)
  cutoff = ACCEPT_FRACTION * min(ratios[e] for e in light) * h_c
  accepted = [(s, h) for s, h in peaks if h >= cutoff][:max_atoms]

  clarity = _peak_clarity(peaks, len(accepted))
  if clarity < MIN_CLARITY:
    return _finish(empty(
      "no clear peaks in the map (contrast %.2f between the %d highest "
      "peaks and the next ones; below %.2f); no atoms placed."
      % (clarity, len(accepted), MIN_CLARITY)), log)

  # Elements: heavy ones by height, light ones by height and bonding.
  light_max = max(ratios[e] for e in light)
  assigned = []
  for site, h in accepted:
    r = h / h_c
    if composition is not None:
      e = _closest(r, ratios, light + heavy)
    elif r > HEAVY_MARGIN * light_max:
      e = _closest(r, ratios, heavy, HEAVY_PRIORS)
    else:
      e = _closest(r, ratios, light)
    assigned.append([site, h, r, e])
  if k_formula is not None:
    _apply_formula_quotas(assigned, composition, k_formula, ratios)

  xs, atoms = _make_structure(cs, assigned, u_iso, h_c)
  bonds = _bonds(xs)
  # Drop weak isolated peaks (noise, hydrogen or ripple) and rebuild.
  bonded = set(i for i, j, op, d in bonds) | set(j for i, j, op, d in bonds)
  keep = [a for i, a in enumerate(assigned)
          if i in bonded or a[2] >= ISOLATED_WEAK_FRACTION]
  if len(keep) != len(assigned):
    assigned = keep
    xs, atoms = _make_structure(cs, assigned, u_iso, h_c)
    bonds = _bonds(xs)
  if len(light) > 1:
    quotas = None
    if k_formula is not None:
      quotas = dict((e, composition.counts[e] * k_formula) for e in light)
    _assign_light_elements(assigned, bonds, light, ratios, weights, quotas)
    xs, atoms = _make_structure(cs, assigned, u_iso, h_c)
    bonds = _bonds(xs)

  frags, moves = _fragments_and_moves(xs, bonds)
  model = _named_model(cs, assigned, frags, moves, u_iso, h_c, map_type,
                       composition, warnings)
  if composition is None:
    model.notes.extend(_default_element_notes(model, ratios, light_max))
  if len(model.atoms) < 0.3 * n_exp and composition is None \
      and not any(a.element in HEAVY_ELEMENTS for a in model.atoms):
    model.warnings.append(
      "only %d atoms found where about %d were expected from the cell volume."
      % (len(model.atoms), round(n_exp)))
  return _finish(model, log)


def model_from_atoms(f_obs, phases_deg, elements, sites, composition=None, log=None,
                     map_type=DEFAULT_MAP_TYPE, u_iso=0.05):
  """The starting model of atoms already placed: an atom model of the
  search (:class:`phai_cctbx.atom_search.AtomModel`) whose F_calc gave the
  chosen phases.  Its elements and sites are kept as they are (atoms on
  special positions stay there); the heights are those of the map of
  ``phases_deg`` at the sites, so that the listing reads as for peaks;
  fragments and names as for a model from peaks (:func:`build_starting_model`).

  Why: the atom search fits |F_obs| with the composition given, its model
  of a mineral or a small molecule already has every element and special
  position right (cryolite at 2.0 A: Al and Na on inversion centres, R1
  0.012), where element by peak height confuses Na, Al and F."""
  composition = parse_elements(composition)
  if f_obs.is_xray_intensity_array():
    f_obs = f_obs.f_sq_as_f()
  cs = f_obs.crystal_symmetry()
  coeffs, norms = map_coefficients(f_obs, phases_deg, map_type=map_type)
  density = sigma_scaled_map(coeffs).real_map_unpadded()
  heights = [density.eight_point_interpolation(tuple(float(x) for x in site))
             for site in sites]
  ratios = expected_height_ratios(coeffs, norms, set(elements) | {"C"}, map_type)
  h_c = _median([h / ratios[e] for h, e in zip(heights, elements)]) or 1.0
  assigned = [[tuple(float(x) for x in site), h, h / h_c, e]
              for site, h, e in zip(sites, heights, elements)]
  xs, atoms = _make_structure(cs, assigned, u_iso, h_c)
  frags, moves = _fragments_and_moves(xs, _bonds(xs))
  model = _named_model(cs, assigned, frags, moves, u_iso, h_c, map_type,
                       composition, [])
  model.from_atom_model = True
  return _finish(model, log)


def _default_element_notes(model, ratios, light_max):
  """Log lines on the element choice without a composition."""
  notes = ["no composition known: C, N and O by peak height and bonding "
           "(organic light elements); a heavier element only for a peak at "
           "least %.1f times the carbon level (%.1f times oxygen's)"
           % (HEAVY_MARGIN * light_max, HEAVY_MARGIN)]
  for a in model.atoms:
    if a.element not in LIGHT_ELEMENTS:
      notes.append("%s: peak %.1f times the carbon level, %s expected at %.1f "
                   "(give elements= if this is wrong)"
                   % (a.label, a.ratio, a.element, ratios[a.element]))
  return notes


def _assign_light_elements(assigned, bonds, light, ratios, weights,
                           quotas=None):
  """Light elements (C, N, O, ...) from peak height, prior and bonding.

  Each light atom is scored per element: a normal likelihood of the log of
  its height ratio (spread :data:`LOG_HEIGHT_SPREAD`), the log prior weight,
  and bonding evidence: oxygen has at most two bonded neighbours, nitrogen at
  most four; a terminal atom with a short bond (double bond, < 1.30 A) or an
  isolated one (water) is more likely O.  With formula counts (``quotas``:
  element -> atoms in the asymmetric unit) the elements other than the most
  common one go to the atoms that favour them most, up to their quota.
  """
  n = len(assigned)
  neighbours = [[] for _ in range(n)]
  for i, j, op, d in bonds:
    if i != j or not op.is_unit_mx():
      neighbours[i].append(d)
  total = float(sum(weights.values()))
  is_light = [a[3] in light for a in assigned]
  scores = []
  for i, (site, h, r, e) in enumerate(assigned):
    if not is_light[i]:
      scores.append(None)
      continue
    nb = len(neighbours[i])
    shortest = min(neighbours[i]) if nb else None
    sc = {}
    for el in light:
      x = math.log(max(r, 1e-6) / ratios[el]) / LOG_HEIGHT_SPREAD
      v = -0.5 * x * x + math.log(max(weights[el], 1e-3) / total)
      if el == "O":
        if nb >= 3:
          v -= 10
        if nb == 0 or (nb == 1 and shortest < 1.30):
          v += 1.0
      elif el == "N":
        if nb >= 5:
          v -= 10
        if nb == 1 and shortest < 1.20:
          v += 1.0
      elif el == "C":
        if nb == 0:
          v -= 1.0
        if nb == 1 and shortest < 1.30:
          v -= 1.0
      sc[el] = v
    scores.append(sc)
  if quotas is None:
    for i, sc in enumerate(scores):
      if sc is not None:
        assigned[i][3] = max(sc, key=sc.get)
    return
  default = max(light, key=lambda e: quotas[e])
  room = dict((e, int(round(quotas[e]))) for e in light)
  candidates = sorted(
    ((scores[i][el] - scores[i][default], i, el)
     for i in range(n) if scores[i] is not None
     for el in light if el != default),
    key=lambda t: -t[0])
  done = set()
  for advantage, i, el in candidates:
    if i in done or room[el] <= 0 or advantage < -3.0:
      continue
    assigned[i][3] = el
    room[el] -= 1
    done.add(i)
  for i in range(n):
    if scores[i] is not None and i not in done:
      assigned[i][3] = default


def _finish(model, log):
  if log is not None:
    model.show(log)
  return model


def _peak_clarity(peaks, n_atoms):
  """Ratio of the atoms' median peak height to the highest peaks after them.

  A map with atoms has a clear gap between the atomic peaks and the noise;
  a map from wrong phases has a continuum of similar peaks.
  """
  n = max(3, min(n_atoms, len(peaks)))
  atoms = [h for s, h in peaks[:n]]
  rest = [h for s, h in peaks[n:2 * n]]
  if not rest:
    return float("inf")
  return _median(atoms) / max(_median(rest), 1e-6)


def _apply_formula_quotas(assigned, composition, k_formula, ratios):
  """With counts, give the heavy elements at most their formula share.

  Peaks ranked by height take the heavy elements (heaviest first) up to
  ``count * formula units``; a peak called heavy beyond its element's quota
  falls back to the closest light element.
  """
  light = [e for e in composition.non_hydrogen()
           if tiny_pse.table(e).atomic_number() <= 9]
  heavy = sorted([e for e in composition.non_hydrogen()
                  if tiny_pse.table(e).atomic_number() > 9],
                 key=lambda e: -ratios[e])
  quota = dict((e, max(1, int(round(composition.counts[e] * k_formula))))
               for e in heavy)
  order = sorted(range(len(assigned)), key=lambda i: -assigned[i][1])
  for i in order:
    site, h, r, e = assigned[i]
    if e not in quota:
      continue
    if quota[e] > 0:
      quota[e] -= 1
      continue
    # Over quota: next lighter heavy element with room, else light.
    alternatives = [x for x in heavy if quota[x] > 0 and ratios[x] < ratios[e]]
    if alternatives:
      e2 = _closest(r, ratios, alternatives)
      quota[e2] -= 1
    elif light:
      e2 = _closest(r, ratios, light)
    else:
      e2 = e
    assigned[i][3] = e2


def _make_structure(cs, assigned, u_iso, h_c, labels=None):
  sps = crystal.special_position_settings(cs, min_distance_sym_equiv=0.5)
  xs = xray.structure(sps)
  atoms = []
  for n, (site, h, r, e) in enumerate(assigned):
    label = labels[n] if labels else "Q%d" % (n + 1)
    xs.add_scatterer(xray.scatterer(
      label=label, site=tuple(site), u=u_iso, occupancy=1.0,
      scattering_type=e))
    atoms.append(PeakAtom(label, e, site, h, r, 0))
  for a, sc in zip(atoms, xs.scatterers()):
    a.multiplicity = sc.multiplicity()
  return xs, atoms


def _named_model(cs, assigned, frags, moves, u_iso, h_c, map_type,
                 composition, warnings):
  """The final model: atoms per fragment, moved together, named C1, N1..."""
  ordered = []
  fragment_index = []
  for k, frag in enumerate(frags):
    for i in frag:
      site, h, r, e = assigned[i]
      moved = moves[i] * site
      ordered.append([tuple(moved), h, r, e])
      fragment_index.append(k)
  serial = {}
  labels = []
  for site, h, r, e in ordered:
    serial[e] = serial.get(e, 0) + 1
    labels.append("%s%d" % (e, serial[e]))
  xs, atoms = _make_structure(cs, ordered, u_iso, h_c, labels=labels)
  for a, k in zip(atoms, fragment_index):
    a.fragment = k
  fragments = [[atoms[n].label for n in range(len(atoms))
                if fragment_index[n] == k] for k in range(len(frags))]
  bonds = [(atoms[i].label, atoms[j].label, d)
           for i, j, op, d in _bonds(xs) if i < j or (i == j)]
  return StartingModel(xs, atoms, fragments, list(warnings), map_type, h_c,
                       composition, bonds=bonds)
