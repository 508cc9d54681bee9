"""Starting signs: partial solutions have exactly the asked fraction wrong,
weak-biased ones put the errors on weak reflections, and the training mix
draws each kind of start at its rate."""
import numpy as np
import pytest

import phai_cctbx  # noqa: F401
import torch

from phai_cctbx import reflection_set
from phai_cctbx.training.examples import ExampleMaker
from phai_cctbx.training.loss import sign_correlation
from phai_cctbx.training.starts import StartMaker


@pytest.fixture(scope="module")
def examples():
  rng = np.random.default_rng(3)
  b, atoms = 12, 60
  frac = rng.random((b, atoms, 3)).astype(np.float32)
  numbers = rng.choice([1, 6, 7, 8, 16], size=(b, atoms)).astype(np.int8)
  cell = np.tile(np.array([7.0, 8.0, 9.0, 90.0, 104.0, 90.0], np.float32), (b, 1))
  maker = ExampleMaker("cpu")
  return maker(frac, numbers, cell, generator=torch.Generator().manual_seed(0))


def _count_wrong_at_origin_zero(maker, ex, start):
  ok = maker.eligible(ex.true_amplitudes)
  return ((start != ex.signs) & ok).sum(1), ok.sum(1)


@pytest.mark.parametrize("weak", [False, True])
def test_partial_has_the_asked_fraction_wrong(examples, weak):
  maker = StartMaker("cpu")
  ex = examples
  b = ex.signs.shape[0]
  asked = torch.linspace(0.05, 0.45, b)
  g = torch.Generator().manual_seed(1)
  start = maker.partial(ex.signs, ex.true_amplitudes, asked, torch.tensor(weak), g,
                        origin_shift=False)
  wrong, count = _count_wrong_at_origin_zero(maker, ex, start)
  assert torch.equal(wrong, torch.round(asked * count).long())
  assert set(start.unique().tolist()) <= {-1.0, 1.0}
  # Laue duplicates follow their mates
  mate = torch.as_tensor(np.array(reflection_set.unique_mate()))
  assert torch.equal(start, start[:, mate])
  # the same fraction, found at the best origin after a random origin shift
  g = torch.Generator().manual_seed(1)
  shifted = maker.partial(ex.signs, ex.true_amplitudes, asked, torch.tensor(weak), g)
  measured = maker.wrong_fraction(ex.signs, shifted, ex.true_amplitudes)
  assert torch.allclose(measured, torch.round(asked * count) / count, atol=1e-6)
  flips = torch.as_tensor(reflection_set.origin_sign_flips(), dtype=torch.float32)
  assert any(not torch.equal(shifted[i], start[i]) for i in range(b))
  assert all(any(torch.equal(shifted[i] * flips[o], start[i]) for o in range(8)) for i in range(b))
  # origin_of finds the shift where the start is clearly nearest the truth
  # (up to a quarter of its signs wrong): moved back by it, it is the start
  # at origin 0
  origin = maker.origin_of(ex.signs, shifted, ex.true_amplitudes)
  clear = [i for i in range(b) if asked[i] <= 0.25]
  assert len(clear) >= 3
  assert all(torch.equal(shifted[i] * flips[origin[i]], start[i]) for i in clear)
  assert len(set(origin[clear].tolist())) > 1


def test_weak_bias_puts_the_errors_on_weak_reflections(examples):
  maker = StartMaker("cpu")
  ex = examples
  g = torch.Generator().manual_seed(2)
  amp = ex.true_amplitudes
  ok = maker.eligible(amp)
  mean_amp = {}
  for weak in (False, True):
    start = maker.partial(ex.signs, amp, torch.tensor(0.25), torch.tensor(weak), g,
                          origin_shift=False)
    flipped = (start != ex.signs) & ok
    mean_amp[weak] = float((amp * flipped).sum() / flipped.sum())
  overall = float((amp * ok).sum() / ok.sum())
  assert mean_amp[True] < 0.6 * overall
  assert 0.8 * overall < mean_amp[False] < 1.2 * overall
  # so weak-biased starts are much better phase sets (r weighted by |F|^2)
  r = {}
  for weak in (False, True):
    start = maker.partial(ex.signs, amp, torch.tensor(0.3), torch.tensor(weak), g)
    r[weak] = float(sign_correlation(amp, ex.signs, start).mean())
  assert r[True] > r[False] + 0.2


def test_extreme_fractions(examples):
  maker = StartMaker("cpu")
  ex = examples
  g = torch.Generator().manual_seed(4)
  none = maker.partial(ex.signs, ex.true_amplitudes, torch.tensor(0.0), torch.tensor(True), g,
                       origin_shift=False)
  ok = maker.eligible(ex.true_amplitudes)
  assert torch.equal(none[ok], ex.signs[ok])
  every = maker.partial(ex.signs, ex.true_amplitudes, torch.tensor(1.0), torch.tensor(False), g,
                        origin_shift=False)
  assert torch.equal(every[ok], -ex.signs[ok])


def test_training_mix_rates(examples):
  maker = StartMaker("cpu")
  ex = examples
  signs = ex.signs.repeat(40, 1)
  amp = ex.true_amplitudes.repeat(40, 1)
  g = torch.Generator().manual_seed(5)
  start, kind = maker.training_starts(signs, amp, g, partial_fraction=0.3, random_fraction=0.5,
                                      wrong_min=0.05, wrong_max=0.45, weak_fraction=0.5)
  n = len(kind)
  assert abs(float((kind == 2).float().mean()) - 0.3) < 0.07
  assert abs(float((kind == 1).float().mean()) - 0.35) < 0.07
  assert torch.all(start[kind == 0] == 1.0)
  wrong = maker.wrong_fraction(signs, start, amp)
  part = wrong[kind == 2]
  assert float(part.min()) >= 0.05 - 0.01 and float(part.max()) <= 0.45 + 0.01
  assert float(wrong[kind == 1].mean()) > 0.4                # random: about half wrong
  _, kind0 = maker.training_starts(signs, amp, g, 0.0, 0.5, 0.05, 0.45, 0.5)
  assert not bool((kind0 == 2).any()) and n == len(kind0)


@pytest.fixture(scope="module")
def validation_examples():
  from phai_cctbx.training import trainer
  batch = trainer.validation_structures(None, 8, 400)
  maker = ExampleMaker("cpu")
  return maker(batch["frac"], batch["numbers"], batch["cell"], generator=torch.Generator().manual_seed(0),
               d_min=torch.tensor(1.0), missing=torch.tensor(0.05), noise=False)


def test_charge_flipping_grid_and_fixed_point(validation_examples):
  """The grid holds every P2_1/c and Friedel mate consistently (a real
  density whose transform gives F back), and charge flipping from the true
  signs stays at the solution."""
  from phai_cctbx.training.starts import ChargeFlipper
  ex = validation_examples
  cf = ChargeFlipper("cpu")
  n = cf.GRID
  f = ex.true_amplitudes * ex.signs
  rho = torch.fft.ifftn(cf.to_grid(f).view(-1, n, n, n).to(torch.complex64), dim=(1, 2, 3))
  assert float(rho.imag.abs().max()) < 1e-5 * float(rho.real.abs().max())
  back = torch.fft.fftn(rho.real, dim=(1, 2, 3)).real.flatten(1)[:, cf.index[0]]
  unique = cf.unique
  assert float(((back - f) * unique).abs().max()) < 1e-4 * float(f.abs().max())
  out = cf(ex.amplitudes, ex.measured, ex.signs, 3)
  assert set(out.unique().tolist()) <= {-1.0, 1.0}
  r = sign_correlation(ex.true_amplitudes, ex.signs, out, ex.measured)
  assert float(r.min()) > 0.9 and float(r.mean()) > 0.95


def test_training_mix_with_charge_flipped_starts(validation_examples):
  from phai_cctbx.training.starts import ChargeFlipper
  ex = validation_examples
  maker = StartMaker("cpu")
  signs, amp = ex.signs.repeat(8, 1), ex.true_amplitudes.repeat(8, 1)
  start, kind = maker.training_starts(signs, amp, torch.Generator().manual_seed(6), 0.3, 0.5, 0.05,
                                      0.45, 0.5, cf_fraction=0.3, flipper=ChargeFlipper("cpu"),
                                      amplitudes=ex.amplitudes.repeat(8, 1),
                                      measured=ex.measured.repeat(8, 1))
  assert 0 < int((kind == 3).sum()) < len(kind) and int((kind == 2).sum()) > 0
  mate = torch.as_tensor(np.array(reflection_set.unique_mate()))
  assert torch.equal(start, start[:, mate]) and set(start.unique().tolist()) <= {-1.0, 1.0}
