"""The batched torch structure generator (for GPUs), run on CPU: its contact
test agrees with a brute-force one, its structures obey the CPU generator's
contact rules, are closed under P2_1/c, and have the CPU generator's
density and composition; the trainer takes structures from it."""
import numpy as np
import pytest

pytest.importorskip("rdkit")
import phai_cctbx  # noqa: F401,E402
import torch  # noqa: E402

from phai_cctbx.training.molecules import build_library  # noqa: E402
from phai_cctbx.training.structures import (  # noqa: E402
  Structure, StructureGenerator, contact_thresholds, insertion_thresholds, orthogonalisation)
from phai_cctbx.training.torch_structures import TorchStructureGenerator  # noqa: E402
from test_structures import (  # noqa: E402
  _brute_force_clash, assert_closed_under_p21c, assert_no_clashes)


@pytest.fixture(scope="module")
def library():
  return build_library(20, seed=11, processes=1, metal_fraction=0.3)


@pytest.fixture(scope="module")
def generated(library):
  gen = TorchStructureGenerator(library, "cpu", chunk=64)
  out = gen.sample_batch(6, torch.Generator().manual_seed(0))
  return gen, out


def _structures(out):
  result = []
  for i in range(out["cell"].shape[0]):
    k = int((out["numbers"][i] != 0).sum())
    body = out["body"][i, :k].numpy()
    result.append(Structure(out["cell"][i].double().numpy(), out["frac"][i, :k].numpy(),
                            out["numbers"][i, :k].numpy(), asym=np.nonzero(body % 4 == 0)[0],
                            body=body))
  return result


def test_structures_obey_the_contact_rules(generated):
  _, out = generated
  assert out["frac"].shape == (6, 400, 3) and out["numbers"].dtype == torch.int8
  assert (out["body"] >= 0).sum() == (out["numbers"] != 0).sum()
  for s in _structures(out):
    a, b, c, al, be, ga = s.cell
    assert 3.5 - 1e-4 <= min(a, b, c) and max(a, b, c) <= 10.0 + 1e-4
    assert al == 90 and ga == 90 and 90 <= be <= 120
    assert 14.0 - 1e-3 <= s.volume_per_heavy_atom() <= 30.0 + 1e-3
    assert ((s.frac >= 0) & (s.frac < 1)).all()
    assert_closed_under_p21c(s)
    assert_no_clashes(s, insertion_thresholds(contact_thresholds()))


def test_contact_test_agrees_with_brute_force(library):
  """Random (mostly clashing) placements: the batched test and the
  brute-force one over translations -2..2 agree on every one."""
  gen = TorchStructureGenerator(library, "cpu")
  g = torch.Generator().manual_seed(3)
  draw = gen._draw(48, g)
  mol = draw["mol"]
  comp = gen._compact(mol)
  cls, _ = gen.compact_classes(mol, comp)
  rot = gen._orientations(mol, g)
  centre = torch.rand((48, 3, 3), generator=g)
  edges = draw["edges"] * 1.3     # looser cells: both outcomes occur
  m = __import__("phai_cctbx.training.torch_structures", fromlist=["x"]).orthogonalisation(
    edges, draw["beta"])
  f = gen._atoms(mol, rot, centre, m, comp)
  thr2 = (torch.as_tensor(insertion_thresholds(contact_thresholds()), dtype=torch.float32)[None]
          * draw["scale"][:, None, None]) ** 2
  fast = gen.clashes(f, cls, comp["slot"], comp["mask"], m, thr2)
  outcomes = set()
  for i in range(48):
    keep = comp["mask"][i].numpy()
    n = int(keep.sum())
    coords = f[i][:, :n].numpy().reshape(-1, 3)          # copy-major
    classes = np.tile(cls[i][:n].numpy(), 4)
    body = (comp["slot"][i][:n].numpy()[None, :] * 4 + np.arange(4)[:, None]).reshape(-1)
    mm = orthogonalisation(*edges[i].double().numpy(), float(draw["beta"][i]))
    slow = _brute_force_clash(coords, classes, body, np.zeros((0, 3)), np.zeros(0, np.int64), mm,
                              thr2[i].double().numpy())
    assert bool(fast[i]) == slow, i
    outcomes.add(slow)
  assert outcomes == {True, False}


def test_density_and_composition_like_the_cpu_generator(library, generated):
  """Against the CPU generator's random insertion (organic, no units on
  inversion centres): median volume per non-hydrogen atom within 20 %, the
  share of hydrogen atoms and the mean molecule count alike."""
  _, out = generated
  ours = _structures(out)
  cpu = StructureGenerator(library, np.random.default_rng(5), inorganic_fraction=0.0,
                           inversion_fraction=0.0, packing="insert", volume_per_atom=(18.0, 30.0))
  theirs = [cpu.sample() for _ in range(24)]
  v_ours = np.median([s.volume_per_heavy_atom() for s in ours])
  v_cpu = np.median([s.volume_per_heavy_atom() for s in theirs])
  assert abs(v_ours / v_cpu - 1) < 0.2, (v_ours, v_cpu)
  h_ours = np.mean([(s.numbers == 1).mean() for s in ours])
  h_cpu = np.mean([(s.numbers == 1).mean() for s in theirs])
  assert abs(h_ours - h_cpu) < 0.15, (h_ours, h_cpu)
  z_ours = np.mean([len(set(s.body.tolist())) / 4 for s in ours])
  z_cpu = np.mean([len(set(s.body.tolist())) / 4 for s in theirs])
  assert 1.0 <= z_ours <= 2.0 and abs(z_ours - z_cpu) < 0.6


def test_structure_factors_of_generated_structures(generated):
  """The trainer's structure factors of a generated structure: real, and
  the same for every origin choice of its symmetry copies (F(h) of the
  centrosymmetric cell does not depend on which copy is listed first)."""
  from phai_cctbx.training.structure_factors import StructureFactorCalculator
  _, out = generated
  calc = StructureFactorCalculator()
  f = calc(out["frac"][:2], out["numbers"][:2], out["cell"][:2], torch.tensor([0.02, 0.02]))
  # an atom list closed under -x,-y,-z: sum of sin terms vanishes
  hkl = calc.hkl
  phase = 2 * np.pi * out["frac"][:2] @ hkl.T
  z = (out["numbers"][:2] != 0).float()
  assert float((torch.sin(phase) * z[..., None]).sum(1).abs().max()) < 1e-2
  assert torch.isfinite(f).all() and float(f.abs().max()) > 1.0


def _tiny_config(library, tmp_path, **kw):
  """A TrainConfig of a tiny network on the CPU, its library saved in tmp_path."""
  from phai_cctbx.training import trainer
  path = str(tmp_path / "lib.npz")
  library.save(path)
  return trainer.TrainConfig(library=path, output_dir=str(tmp_path), batch_size=2, workers=1,
                             chunk=2, pool_size=8, min_pool=2, validation_size=0, device="cpu",
                             filters=4, cnn_depth=1, dim=32, dim_exp=32, dim_token_exp=8,
                             mlp_depth=1, **kw)


def test_trainer_takes_device_structures(library, tmp_path):
  """device_structures: new structures made on the training device (here
  the CPU) go into each batch."""
  from phai_cctbx.training import trainer
  _, state = trainer.train(_tiny_config(library, tmp_path, max_steps=2, device_structures=0.5))
  assert state["step"] == 2 and state["examples"] == 4


def test_device_quota_without_time_share_gives_the_ceiling():
  from phai_cctbx.training.trainer import DeviceStructureQuota
  q = DeviceStructureQuota(0.5, 64)
  assert q.ceiling == 32 and q.block == 256
  q.record_generation(100, 50.0)  # however slow: no time share asked for
  q.record_step(0.01)
  assert [q.per_step() for _ in range(3)] == [32, 32, 32]
  assert DeviceStructureQuota(3.0, 64).ceiling == 64  # never more than a batch
  assert DeviceStructureQuota(0.001, 64).ceiling == 1


def test_device_quota_follows_the_time_share():
  """n per step = share / (1 - share) x step seconds / seconds per structure,
  fractions carried over, never above the ceiling; blocks follow n."""
  from phai_cctbx.training.trainer import DeviceStructureQuota
  q = DeviceStructureQuota(1.0, 256, time_share=0.2, block=2048)
  assert q.per_step() == 256 and q.next_block(256) == 256  # rates unknown: one step's worth first
  q.record_generation(256, 2.56)    # 0.01 s per structure
  q.record_step(0.05)
  assert abs(q.target() - 1.25) < 1e-9
  counts = [q.per_step() for _ in range(8)]
  assert sum(counts) == 10 and set(counts) == {1, 2}
  assert q.next_block(1) == 80                # 64 steps' worth
  q.record_generation(2048, 0.02048)  # a fast generator: capped by the ceiling and the block
  assert q.target() == 256.0 and q.next_block(256) == 2048
  assert abs(q.rate() - (256 + 2048) / 2.58048) < 1e-6
  slow = DeviceStructureQuota(1.0, 256, time_share=0.25)
  slow.record_generation(256, 256.0)   # one structure a second
  slow.record_step(0.03)
  assert slow.target() < 0.011 and sum(slow.per_step() for _ in range(50)) == 0
  assert slow.next_block(0) == 1


def test_trainer_takes_device_structures_within_a_time_share(library, tmp_path):
  """With device_time_share the trainer still trains every step and logs the
  device generator's rate."""
  import io
  from phai_cctbx.training import trainer
  cfg = _tiny_config(library, tmp_path, max_steps=4, device_structures=1.0, device_time_share=0.5,
                     device_block=4, log_every=2)
  log = io.StringIO()
  _, state = trainer.train(cfg, log=log)
  assert state["step"] == 4 and state["examples"] == 8
  assert "structures/s" in log.getvalue() and "device:" in log.getvalue()


def test_trainer_goes_on_from_the_pool_when_the_device_generator_fails(library, tmp_path, monkeypatch):
  import io
  from phai_cctbx.training import trainer, torch_structures

  def broken(self, n, generator, candidates=None):
    raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")
  monkeypatch.setattr(torch_structures.TorchStructureGenerator, "sample_batch", broken)
  log = io.StringIO()
  _, state = trainer.train(_tiny_config(library, tmp_path, max_steps=3, device_structures=1.0), log=log)
  assert state["step"] == 3
  assert log.getvalue().count("device structure generator failed (CUDA error: an illegal memory "
                              "access was encountered): training goes on") == 1


def test_the_heavy_atom_pre_test_changes_no_decision(library):
  """Testing the heavy atoms first gives the flags of the full test on
  random placements (both outcomes occur), and the same structures from
  the same random numbers."""
  flags = []
  for heavy_first in (False, True):
    gen = TorchStructureGenerator(library, "cpu", heavy_first=heavy_first)
    g = torch.Generator().manual_seed(5)
    draw = gen._draw(64, g)
    mol = draw["mol"]
    draw["comp"] = gen._compact(mol)
    draw["cls"], draw["z"] = gen.compact_classes(mol, draw["comp"])
    draw["comp_heavy"] = gen._compact(mol, heavy=True)
    draw["cls_heavy"], _ = gen.compact_classes(mol, draw["comp_heavy"])
    draw["thr2"] = (torch.as_tensor(insertion_thresholds(contact_thresholds()),
                                    dtype=torch.float32)[None] * draw["scale"][:, None, None]) ** 2
    rot = gen._orientations(mol, g)
    centre = torch.rand((64, 3, 3), generator=g)
    todo = torch.nonzero(draw["ok"]).flatten()
    flags.append(gen._test_many(draw, rot, centre, draw["edges"] * 1.3, todo))
  assert torch.equal(flags[0], flags[1])
  assert 0 < int(flags[0].sum()) < len(flags[0])
  outs = [TorchStructureGenerator(library, "cpu", heavy_first=h).sample_batch(
    4, torch.Generator().manual_seed(2)) for h in (False, True)]
  for k in ("frac", "numbers", "cell", "body"):
    assert torch.equal(outs[0][k], outs[1][k])


def test_heavy_atoms_first_is_the_default_on_the_cpu_only(library):
  """Measured: the pre-test makes the CPU generator about three times
  faster and an H200's about a sixth slower, so it is picked by device."""
  assert TorchStructureGenerator(library, "cpu").heavy_first
  assert not TorchStructureGenerator(library, "cpu", heavy_first=False).heavy_first
  meta = TorchStructureGenerator(library, "meta")
  assert not meta.heavy_first


def test_device_source_in_the_background_puts_what_was_made_first(library, tmp_path):
  """device_background: the batch begins with the structures the thread
  made (into the pool too), up to device_structures per example, and goes
  on from the pool."""
  import time
  from phai_cctbx.training import trainer
  from phai_cctbx.training.data import StructurePool
  cfg = _tiny_config(library, tmp_path, device_structures=0.5, device_block=3,
                     device_background=True)
  cfg.batch_size = 4
  source = trainer.DeviceStructureSource(library, torch.device("cpu"), cfg,
                                         torch.Generator().manual_seed(1))
  try:
    t = time.time()
    while source.background.made < 3:
      assert time.time() - t < 60
      time.sleep(0.05)
    pool = StructurePool(16, cfg.max_atoms, "cpu")
    pool.add({"frac": torch.zeros((4, cfg.max_atoms, 3)), "numbers": torch.zeros((4, cfg.max_atoms),
              dtype=torch.int8), "cell": torch.full((4, 6), 99.0)})
    frac, numbers, cell = source.batch(pool, torch.Generator().manual_seed(0))
    assert cell.shape[0] == 4 and pool.added == 4 + 2
    assert (cell[:2, 0] < 11).all() and (cell[2:, 0] == 99).all()   # two new, then the pool
    assert (numbers[:2] != 0).any(1).all()
    assert "device (background):" in source.note()
    source.clock.tick()                 # no time share to feed: steps are not timed
    assert source.quota.step_seconds is None and source.clock.steps == 0
  finally:
    source.close()
  assert not source.background._thread.is_alive()


def test_trainer_with_the_device_generator_in_the_background(library, tmp_path):
  import io
  from phai_cctbx.training import trainer
  cfg = _tiny_config(library, tmp_path, max_steps=4, device_structures=1.0, device_block=4,
                     device_background=True, log_every=2)
  log = io.StringIO()
  _, state = trainer.train(cfg, log=log)
  assert state["step"] == 4 and state["examples"] == 8
  assert "device (background):" in log.getvalue()


def test_trainer_goes_on_when_the_background_generator_fails(library, tmp_path, monkeypatch):
  import io
  from phai_cctbx.training import trainer, torch_structures

  def broken(self, n, generator, candidates=None):
    raise RuntimeError("CUDA error: out of memory\nmore lines")
  monkeypatch.setattr(torch_structures.TorchStructureGenerator, "sample_batch", broken)
  log = io.StringIO()
  _, state = trainer.train(_tiny_config(library, tmp_path, max_steps=40, device_structures=1.0,
                                        device_background=True), log=log)
  assert state["step"] == 40
  assert log.getvalue().count("device structure generator failed (CUDA error: out of memory): "
                              "training goes on") == 1


def test_nearest_and_own_image_distances_agree_with_brute_force():
  """Random atoms in cells with edges 3.5-10 A and beta 90-120 (a-c bases
  far from reduced among them): every pair's distance to the nearest image,
  and to the nearest image under a translation other than zero, as a search
  over 343 translations finds them."""
  from phai_cctbx.training import torch_structures as ts
  rng = np.random.default_rng(7)
  b, n, k = 64, 6, 10
  edges = torch.as_tensor(rng.uniform(3.5, 10.0, (b, 3)), dtype=torch.float32)
  edges[:8, 0], edges[:8, 2] = 3.5, 10.0           # the most oblique a-c planes
  beta = torch.as_tensor(rng.uniform(90.0, 120.0, b), dtype=torch.float32)
  beta[:8] = 120.0
  m = ts.orthogonalisation(edges, beta)
  first = torch.as_tensor(rng.uniform(-1.5, 2.5, (b, n, 3)), dtype=torch.float32)
  every = torch.as_tensor(rng.uniform(-1.5, 2.5, (b, k, 3)), dtype=torch.float32)
  fast_near = ts.nearest_image_d2(first, every, m).double().numpy()
  fast_own = ts.own_image_d2(first, m).double().numpy()
  grid = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
  for i in range(b):
    mm = m[i].double().numpy()
    for other, fast, own in ((every[i], fast_near[i], False), (first[i], fast_own[i], True)):
      d = first[i].double().numpy()[:, None] - other.double().numpy()[None]
      r = np.round(d)
      best = np.full(d.shape[:2], np.inf)
      for t in grid:
        total = t - r                                    # the translation applied to the pair
        d2 = (((d + total) @ mm.T) ** 2).sum(-1)
        if own:
          d2[(total == 0).all(-1)] = np.inf
        best = np.minimum(best, d2)
      np.testing.assert_allclose(fast, best, rtol=2e-4, atol=2e-4, err_msg="cell %d own %s" % (i, own))


def test_contact_test_finds_the_shortest_contact_in_any_cell(library):
  """Small random bodies in cells with edges 3.5-10 A and beta 90-120 (a-c
  bases far from reduced among them): with one threshold for every pair,
  the test flags a cell exactly when that threshold exceeds the shortest
  contact that a brute-force search over 125 translations finds (bonds
  within a body at zero translation left out)."""
  from phai_cctbx.training import torch_structures as ts
  gen = TorchStructureGenerator(library, "cpu")
  rng = np.random.default_rng(7)
  b, n = 160, 8
  edges = torch.as_tensor(rng.uniform(3.5, 10.0, (b, 3)), dtype=torch.float32)
  beta = torch.as_tensor(rng.uniform(90.0, 120.0, b), dtype=torch.float32)
  m = ts.orthogonalisation(edges, beta)
  slot = torch.as_tensor(rng.integers(0, 2, (b, n)))
  mask = torch.as_tensor(rng.random((b, n)) < 0.8)
  mask[:, 0] = True
  centre = torch.as_tensor(rng.random((b, 2, 3)), dtype=torch.float32)
  offset = torch.as_tensor(rng.normal(0, 1.2, (b, n, 3)), dtype=torch.float32)
  f0 = centre[torch.arange(b)[:, None], slot] + offset @ torch.linalg.inv(m).transpose(1, 2)
  f = ts.OPS_ROT[None, :, None, :] * f0[:, None] + ts.OPS_TRANS[None, :, None, :]
  cls = torch.zeros((b, n), dtype=torch.long)
  shortest = np.empty(b)
  grid = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
  for i in range(b):
    keep = mask[i].numpy()
    first = f[i, 0].double().numpy()[keep]
    every = f[i].double().numpy()[:, keep].reshape(-1, 3)
    body_first = slot[i].numpy()[keep] * 4
    body_every = (slot[i].numpy()[keep][None, :] * 4 + np.arange(4)[:, None]).reshape(-1)
    d = first[:, None] - every[None]
    r = np.round(d)
    same = body_first[:, None] == body_every[None, :]
    best = np.inf
    for t in grid:
      d2 = (((d - r + t) @ m[i].double().numpy().T) ** 2).sum(-1)
      d2[same & (t == r).all(-1)] = np.inf
      best = min(best, d2.min())
    shortest[i] = best
  for factor, expected in ((1.001, True), (0.999, False)):
    thr2 = torch.as_tensor(shortest * factor, dtype=torch.float32)[:, None, None].expand(b, 6, 6)
    flags = gen.clashes(f, cls, slot, mask, m, thr2.contiguous())
    assert flags.tolist() == [expected] * b, np.nonzero(flags.numpy() != expected)[0]
