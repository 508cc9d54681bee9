"""Network inputs: scaling, duplicates, grid placement, and signs from logits."""
import numpy as np

import phai_cctbx  # noqa: F401
import torch

from phai_cctbx import network_io, reflection_set


def test_reflection_list_layout():
  hkl = reflection_set.indices()
  assert len(hkl) == 1205
  assert (reflection_set.unique_mask()).sum() == 1042
  assert tuple(hkl[0]) == (-10, 0, 0) and tuple(hkl[-1]) == (10, 0, 0)


def test_mean_scaling_ignores_a_missing_strongest_reflection():
  rng = np.random.default_rng(0)
  a = torch.as_tensor(rng.exponential(size=(1, 1205)), dtype=torch.float32)
  top = a.argmax()
  a[0, top] *= 3.0  # a dominant strongest reflection, as low-angle data often have
  m = torch.ones_like(a, dtype=torch.bool)
  m2 = m.clone()
  m2[0, top] = False
  s1 = network_io.scale_amplitudes(a, m, "mean")
  s2 = network_io.scale_amplitudes(a, m2, "mean")
  others = torch.arange(1205) != top
  assert torch.allclose(s1[0, others], s2[0, others], rtol=0.05)
  # The published max-scaling changes every amplitude when the strongest goes.
  t1 = network_io.scale_amplitudes(a, m, "max")
  t2 = network_io.scale_amplitudes(a, m2, "max")
  assert not torch.allclose(t1[0, others], t2[0, others], rtol=0.02)


def test_duplicates_filled_from_mates():
  hkl = reflection_set.indices()
  v = torch.arange(1205, dtype=torch.float32)[None]
  f = network_io.fill_duplicates(v)[0]
  i = reflection_set.position_of((-3, 2, 0))
  j = reflection_set.position_of((3, 2, 0))
  assert f[i] == j and f[j] == j
  assert (f[hkl[:, 2] > 0] == v[0, hkl[:, 2] > 0]).all()


def test_grid_placement():
  v = torch.zeros(1, 1205)
  i = reflection_set.position_of((-2, 3, 4))
  v[0, i] = 7.0
  g = network_io.to_grid(v)
  assert g.shape == (1, 21, 11, 11) and g[0, 8, 3, 4] == 7.0 and g.sum() == 7.0


def test_phase_grid_degrees():
  s = torch.ones(1, 1205)
  s[0, 0] = -1
  g = network_io.phase_grid(s)
  assert g[0, 0, 0, 0] == -180.0 and g.min() == -180.0 and (g == -180.0).sum() == 1


def test_signs_from_logits():
  logits = torch.tensor([[[2.0, -1.0], [0.0, 1.0]]])  # class 0 = pi, class 1 = 0
  s, p = network_io.signs_and_probabilities(logits)
  assert s.tolist() == [[-1.0, 1.0]]
  assert torch.allclose(p, torch.sigmoid(torch.tensor([[2.0, 2.0]])))
