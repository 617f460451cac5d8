"""A fast smoke run of the benchmarks at tiny sizes (train_step, compare_release, irnn_adding).

Checks numbers, never wall-clock speed: both jaxrnn gradients train the same
model to the same losses, and the FLOP count and roofline follow their formulas;
the previous release, imported as ``jaxrnn_prev``, computes the same loss as
this tree; a tiny adding-problem run learns and reports its curve.
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


def test_all_cores_row_is_the_split_step_with_the_same_loss():
  """The ``jaxrnn_all_cores`` row (the command's default step) trains the same model."""
  problem = train_step.make_problem(*SIZES)
  losses = [train_step.MAKERS[name](problem)() for name in ("jaxrnn_all_cores", "jaxrnn_fused")]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
  payload = {"configs": {"tiny": {"results": {"jaxrnn_fused": {"ms": 2.0, "roofline_pct": 10.0},
                                               "jaxrnn_all_cores": {"ms": 1.0,
                                                                    "roofline_pct": 20.0}}}}}
  rows = train_step.scaling_rows(payload)
  assert [r["devices"] for r in rows] == [1, train_step.jax.device_count()]
  assert rows[1]["speedup"] == 2.0 and rows[0]["efficiency_pct"] == 100.0


def test_weights_round_trip_through_rnn_params():
  problem = train_step.make_problem(*SIZES)
  params = train_step.rnn_params(problem.params)
  assert len(params.layers) == 1 and len(params.layers[0]) == 1
  for a, b in zip(train_step.weights_of(params), problem.params):
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not (Path("/work/prev") / "jaxrnn").is_dir(),
                    reason="no checkout of the previous release at /work/prev")
def test_compare_release_runs_old_and_new_on_the_same_problem():
  import compare_release
  prev = compare_release.import_previous(Path("/work/prev"))
  assert prev.__name__ == "jaxrnn_prev" and prev.__version__ != train_step.jaxrnn.__version__
  assert Path(prev.sequence_loss.__code__.co_filename).parts[-2] == "jaxrnn_prev"
  r = compare_release.run_config(prev, SIZES, rounds=2, warmup=1)
  # Same data, same weights, same summed cross-entropy: the two releases' losses agree.
  np.testing.assert_allclose(r["first_loss"]["old"], r["first_loss"]["new"], rtol=1e-5)
  np.testing.assert_allclose(r["ratio_new_over_old"],
                             np.median(r["times_ms"]["new"]) / np.median(r["times_ms"]["old"]),
                             rtol=1e-9)


def test_irnn_adding_tiny_run_learns_and_reports():
  import irnn_adding
  args = irnn_adding.parse_args(["--steps", "20", "--hidden", "8", "--eval-every", "10",
                                 "--test-size", "64", "--lr", "0.01"])
  run = irnn_adding.train_one("tanh", 8, args)
  steps = [s for s, _ in run["curve"]]
  assert steps == [0, 10, 20] and run["status"] == "ok"
  # Adam at lr 0.01 on T = 8 gets below its own starting test MSE in 20 steps.
  assert run["final_test_mse"] < run["curve"][0][1]
  assert run["final_test_mse"] == run["curve"][-1][1]
  assert run["solved"] == (run["final_test_mse"] < 0.05)
