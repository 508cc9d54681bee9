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
