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
  inputs are scattered to)."""
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
  assert torch.allclose(diff[:, 1, r], expect) and torch.allclose(diff[:, 1], grid[:, headed.voxel_index])
  assert torch.equal(diff[:, 0], torch.zeros_like(diff[:, 0]))
