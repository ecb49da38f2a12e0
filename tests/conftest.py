import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
"""The fixtures BVLC Caffe produced (a copy of shared/golden; npz files recompressed, values unchanged)."""

# the deployed nets' measured settings (protocaffe.deploy.settings) go to a folder of this run's
os.environ["PROTOCAFFE_CACHE"] = tempfile.mkdtemp(prefix="protocaffe-cache-")

HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
if HAS_CUDA:
    # the golden fixtures are IEEE float32 (Caffe's CPU build); cuDNN's TF32 convolutions,
    # PyTorch's default from Ampere on, differ from them by about 1e-3. protocaffe's fp32
    # precision turns TF32 off the same way (protocaffe/speed.py).
    torch.backends.cudnn.allow_tf32 = False

# property-based tests: a small fixed budget by default, a large random one with
# --hypothesis-profile=deep; every input must finish within 2 s
settings.register_profile("ci", max_examples=40, deadline=2000, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=5000, deadline=2000,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture
def golden_cwd(monkeypatch):
    """Run with the golden folder as working directory: its prototxt paths are relative to it."""
    monkeypatch.chdir(GOLDEN)
    return GOLDEN


def assert_close(actual, expected, rtol=1e-4, atol=1e-5, what=""):
    """float32 agreement: relative tolerance plus an absolute floor scaled to the data's magnitude."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


@pytest.fixture
def logged(caplog):
    """caplog that also sees the protocaffe logger once a command has stopped its propagation."""
    logger = logging.getLogger("protocaffe")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, "protocaffe")
    yield caplog
    logger.removeHandler(caplog.handler)
