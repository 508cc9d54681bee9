"""The network reproduces the reference implementation's logits from its state dict."""
import json
import os

import numpy as np
import pytest

import phai_cctbx  # noqa: F401
import torch

from phai_cctbx.model import PhAIConfig, PhAINet, PUBLISHED

REF = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "phai_reference")


@pytest.mark.skipif(not os.path.isdir(REF), reason="reference network not present")
def test_reproduces_reference_logits():
  config = PhAIConfig.from_json(os.path.join(REF, "tiny_phai_config.json"))
  net = PhAINet(config).eval()
  net.load_state_dict(torch.load(os.path.join(REF, "tiny_phai_state_dict.pt")))
  io = np.load(os.path.join(REF, "tiny_phai_io.npz"))
  with torch.no_grad():
    logits = net(torch.tensor(io["amplitudes"]), torch.tensor(io["phases_deg"]))
  assert logits.shape == io["logits"].shape
  np.testing.assert_allclose(logits.numpy(), io["logits"], atol=1e-5, rtol=0)


def test_published_size():
  # The paper's network has about 42.4 M parameters.
  assert PhAINet(PUBLISHED).parameter_count() == 42443882


def test_config_rejects_unknown_keys():
  with pytest.raises(ValueError, match="unknown"):
    PhAIConfig.from_dict({"filters": 8, "depth": 3})


def test_output_shape_follows_config():
  c = PhAIConfig(filters=4, cnn_depth=1, dim=16, dim_exp=16, dim_token_exp=8, mlp_depth=1)
  net = PhAINet(c)
  out = net(torch.rand(2, 21, 11, 11), torch.zeros(2, 21, 11, 11))
  assert out.shape == (2, 2, 1205)


def test_voxel_head_starts_at_zero_and_reads_each_reflections_voxel():
  """With the voxel head the logits start as those of the same network
  without it; the head then adds, for each reflection, the 1x1x1 output of
  the conv features at that reflection's input voxel (the voxels the
  inputs are scattered to) and of the input's sign and sign times
  amplitude there."""
  from phai_cctbx import network_io
  c = PhAIConfig(filters=4, cnn_depth=1, dim=16, dim_exp=16, dim_token_exp=8, mlp_depth=1)
  plain = PhAINet(c)
  torch.manual_seed(0)
  headed = PhAINet(PhAIConfig(**dict(c.as_dict(), voxel_head=True)))
  missing, unexpected = headed.load_state_dict(plain.state_dict(), strict=False)
  assert sorted(missing) == ["net_voxel_output.bias", "net_voxel_output.weight"] and not unexpected
  amplitudes = torch.rand(2, 21, 11, 11)
  phases = torch.where(torch.rand(2, 21, 11, 11) < 0.5, -180.0, 0.0)
  with torch.no_grad():
    assert torch.equal(plain(amplitudes, phases), headed(amplitudes, phases))
    assert torch.equal(headed.voxel_index, torch.as_tensor(network_io._grid_index(10)))
    # a head that passes conv channel 0 to class 1
    headed.net_voxel_output.weight[1, 0] = 1.0
    features = {}
    headed.net_convolution_layers[-1].register_forward_hook(
      lambda m, i, o: features.update(x=o))
    diff = headed(amplitudes, phases) - plain(amplitudes, phases)
  grid = features["x"][:, 0].flatten(1)
  ih, ik, il = __import__("phai_cctbx.reflection_set", fromlist=["x"]).grid_positions(10)
  r = 37
  expect = features["x"][:, 0, ih[r], ik[r], il[r]]
  assert torch.allclose(diff[:, 1, r], expect, atol=1e-6)
  assert torch.allclose(diff[:, 1], grid[:, headed.voxel_index], atol=1e-6)
  assert torch.equal(diff[:, 0], torch.zeros_like(diff[:, 0]))
  # the two input channels: sign and sign times amplitude at the voxel
  with torch.no_grad():
    headed.net_voxel_output.weight.zero_()
    headed.net_voxel_output.weight[0, c.filters] = 1.0
    headed.net_voxel_output.weight[1, c.filters + 1] = 1.0
    diff = headed(amplitudes, phases) - plain(amplitudes, phases)
  sign = torch.where(phases == 0, 1.0, -1.0).flatten(1)[:, headed.voxel_index]
  amp = amplitudes.flatten(1)[:, headed.voxel_index]
  assert torch.allclose(diff[:, 0], sign, atol=1e-6)
  assert torch.allclose(diff[:, 1], sign * amp, atol=1e-6)


def _copy_accuracy(voxel_head, steps=60):
  """Accuracy after training a small network to return its input signs
  (80 % of them right) as the output."""
  from phai_cctbx import network_io
  torch.manual_seed(0)
  net = PhAINet(PhAIConfig(filters=4, cnn_depth=1, dim=32, dim_exp=32, dim_token_exp=8,
                           mlp_depth=1, voxel_head=voxel_head))
  opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
  g = torch.Generator().manual_seed(1)
  for _ in range(steps):
    amp = torch.rand(8, 1205, generator=g)
    true = torch.where(torch.rand(8, 1205, generator=g) < 0.5, -1.0, 1.0)
    start = torch.where(torch.rand(8, 1205, generator=g) < 0.2, -true, true)
    logits = net(network_io.amplitude_grid(amp, amp > 0, "mean"), network_io.phase_grid(start))
    loss = torch.nn.functional.cross_entropy(logits, (true > 0).long())
    opt.zero_grad()
    loss.backward()
    opt.step()
  return float(((logits.argmax(1) * 2 - 1).float() == true).float().mean())


def test_the_voxel_head_carries_input_signs_to_the_output():
  """Random signs cannot pass through the mixer's token mean; through the
  voxel head a network learns to copy them within sixty steps."""
  with_head, without = _copy_accuracy(True), _copy_accuracy(False)
  assert with_head > 0.75 and without < 0.6
