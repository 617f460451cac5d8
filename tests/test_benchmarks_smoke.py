"""A fast smoke run of the jaxrnn part of ``benchmarks/train_step.py`` at tiny sizes.

Checks numbers, never wall-clock speed: both jaxrnn gradients train the same
model to the same losses, and the FLOP count and roofline follow their formulas.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import train_step  # noqa: E402

SIZES = (6, 3, 4, 8, 5)   # (T, B, I, H, O)


@pytest.fixture(scope="module")
def result():
  return train_step.run_config(SIZES, ["jaxrnn_fused", "jaxrnn_autodiff"], rounds=2, warmup=1,
                              sgemm_size=256)


def test_train_flops_formula():
  T, B, I, H, O = SIZES
  assert train_step.train_flops(*SIZES) == 6 * T * B * (I * H + H * H + H * O) == 14688


def test_jaxrnn_fused_and_autodiff_agree(result):
  fused, autodiff = result["results"]["jaxrnn_fused"], result["results"]["jaxrnn_autodiff"]
  T, B, _, _, O = SIZES
  # Glorot weights, summed cross-entropy over T * B tokens: near T B log(O) at the start.
  assert 0.5 * T * B * np.log(O) < fused["first_loss"] < 2 * T * B * np.log(O)
  np.testing.assert_allclose(fused["first_loss"], autodiff["first_loss"], rtol=1e-5)
  assert fused["ratio_to_jaxrnn"] == 1.0
  assert len(fused["times_ms"]) == 2 and all(t > 0 for t in fused["times_ms"])


def test_roofline_follows_from_times(result):
  fused = result["results"]["jaxrnn_fused"]
  expected = 100 * result["flops"] / (fused["ms"] / 1e3) / (result["sgemm_gflops"] * 1e9)
  np.testing.assert_allclose(fused["roofline_pct"], expected, rtol=1e-12)
  assert result["sgemm_gflops"] > 0.1
  assert result["sizes"] == dict(zip("TBIHO", SIZES))


def test_numpy_seed_style_step_matches_jaxrnn_loss():
  problem = train_step.make_problem(*SIZES)
  losses = [train_step.MAKERS[name](problem)() for name in ("numpy", "jaxrnn_fused")]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
