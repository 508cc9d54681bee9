"""Weights files: published layout, the package's format, and every way they can be wrong."""
import os

import pytest

import phai_cctbx  # noqa: F401
from libtbx.utils import Sorry
import torch

from phai_cctbx.model import PhAIConfig, PhAINet
from phai_cctbx import weights

REF = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "phai_reference")
SMALL = PhAIConfig(filters=4, cnn_depth=2, dim=16, dim_exp=24, dim_token_exp=8, mlp_depth=3)


def test_sizes_read_off_a_state_dict():
  net = PhAINet(SMALL)
  assert weights.config_from_state_dict(net.state_dict()) == SMALL


@pytest.mark.skipif(not os.path.isdir(REF), reason="reference network not present")
def test_loads_reference_state_dict(tmp_path):
  m = weights.load_model(os.path.join(REF, "tiny_phai_state_dict.pt"))
  assert m.config == PhAIConfig.from_json(os.path.join(REF, "tiny_phai_config.json"))
  assert m.amplitude_scaling == "max"


def test_round_trip_package_format(tmp_path):
  net = PhAINet(SMALL)
  path = str(tmp_path / "w.pt")
  digest = weights.save_weights(path, net, "mean", {"examples_seen": 5})
  assert open(path + ".sha256").read().split()[0] == digest == weights.sha256_of(path)
  m = weights.load_model(path)
  assert m.amplitude_scaling == "mean" and m.card["examples_seen"] == 5
  x = torch.rand(1, 21, 11, 11)
  with torch.no_grad():
    a = net(x, torch.zeros_like(x))
    b = m(x, torch.zeros_like(x))
  assert torch.allclose(a, b, atol=5e-2)  # half-precision storage


def test_missing_file():
  with pytest.raises(Sorry, match="not found"):
    weights.load_model("/nonexistent/weights.pt")


def test_corrupt_file(tmp_path):
  p = tmp_path / "bad.pt"
  p.write_bytes(b"this is not a torch file")
  with pytest.raises(Sorry, match="Cannot read"):
    weights.load_model(str(p))


def test_wrong_shape(tmp_path):
  sd = PhAINet(SMALL).state_dict()
  sd["net_output.3.weight"] = sd["net_output.3.weight"][:, :10]
  p = tmp_path / "shape.pt"
  torch.save(sd, p)
  with pytest.raises(Sorry, match="does not fit"):
    weights.load_model(str(p))


def test_not_a_network(tmp_path):
  p = tmp_path / "other.pt"
  torch.save({"a": torch.zeros(3)}, p)
  with pytest.raises(Sorry, match="PhAI"):
    weights.load_model(str(p))


def test_default_checksum_is_checked(tmp_path, monkeypatch):
  path = str(tmp_path / weights.DEFAULT_NAME)
  weights.save_weights(path, PhAINet(SMALL), "mean", {})
  monkeypatch.setattr(weights, "default_weights_path", lambda: path)
  assert weights.load_model().config == SMALL
  with open(path, "ab") as f:
    f.write(b"x")
  with pytest.raises(Sorry, match="sha256"):
    weights.load_model()


def test_a_voxel_head_is_read_off_a_state_dict_and_kept_in_the_package_format(tmp_path):
  config = PhAIConfig(**dict(SMALL.as_dict(), voxel_head=True))
  net = PhAINet(config)
  assert weights.config_from_state_dict(net.state_dict()) == config
  path = str(tmp_path / "w.pt")
  weights.save_weights(path, net, "mean", {})
  assert weights.load_model(path).config.voxel_head
