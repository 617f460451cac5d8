"""A fast smoke run of every benchmark script: ``--help``, and its ``--quick`` mode on tiny sizes.

Checks numbers, never wall-clock speed: both jaxrnn gradients train the same
model to the same losses, and the FLOP count and roofline follow their formulas;
the previous release (exported from this checkout's git history, imported as
``jaxrnn_prev``) computes the same loss as this tree; a tiny adding-problem run
learns and reports its curve; a random tanh network's largest Lyapunov exponent
is log rho(W_hh) where its state dies out and near mean-field theory where it
is chaotic, and the theory meets its Monte-Carlo estimate and its series near
g = 1; the forward-only and generation paths agree with torch; the long-stream
split agrees with the sequential chain; the GPU script's scan and kernel rows
agree with its float64 oracle; the Flax NNX and Equinox layers, each framework's own RNN and
jaxrnn's functional step train the same model to the same loss.
The scripts write their JSON into a temporary folder, not ``benchmarks/results/``.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import process_env

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import train_step  # noqa: E402

SCRIPTS = ("chaos", "common", "compare_release", "eager_calls", "gpu", "inference", "irnn_adding",
           "layers", "long_stream", "scaling", "train_step", "xla_cpu_flags")
SIZES = (6, 3, 4, 8, 5)   # (T, B, I, H, O)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """``benchmarks/results`` moved to a temporary folder for the scripts of this module."""
  folder = tmp_path_factory.mktemp("results")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(common, "RESULTS", folder)
    yield folder


def written(results, name):
  """The JSON a script wrote as ``results/<name>.json``."""
  return json.loads((results / f"{name}.json").read_text())


HELP = textwrap.dedent("""
    import contextlib, io, runpy, sys
    sys.path.insert(0, {benchmarks!r})
    for name in {scripts!r}:
      sys.argv = [name + ".py", "--help"]
      out = io.StringIO()
      try:
        with contextlib.redirect_stdout(out):
          runpy.run_path({benchmarks!r} + "/" + name + ".py", run_name="__main__")
        code = "no exit"
      except SystemExit as done:
        code = done.code
      print(name, code, "usage: " + name + ".py" in out.getvalue())
""")


def test_every_script_answers_help():
  """``python benchmarks/X.py --help`` prints X's usage and exits 0 (run in one interpreter)."""
  done = subprocess.run([sys.executable, "-c", HELP.format(benchmarks=str(BENCHMARKS),
                                                           scripts=SCRIPTS)],
                        capture_output=True, text=True, timeout=300, cwd=BENCHMARKS.parent)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split("\n")[:-1] == [f"{name} 0 True" for name in SCRIPTS], done.stdout


@pytest.fixture(scope="module")
def quick_train_step(results):
  """``train_step.py --quick``: the jaxrnn fused and autodiff steps on the tiny configuration."""
  payload = train_step.main(["--quick"])
  assert written(results, "train_step_quick")["configs"].keys() == {"tiny"}
  return payload["configs"]["tiny"]


def test_train_flops_formula():
  T, B, I, H, O = SIZES
  assert train_step.train_flops(*SIZES) == 6 * T * B * (I * H + H * H + H * O) == 14688


def test_jaxrnn_fused_and_autodiff_agree(quick_train_step):
  fused = quick_train_step["results"]["jaxrnn_fused"]
  autodiff = quick_train_step["results"]["jaxrnn_autodiff"]
  T, B, _, _, O = train_step.QUICK_CONFIGS["tiny"]
  # Glorot weights, summed cross-entropy over T * B tokens: near T B log(O) at the start.
  assert 0.5 * T * B * np.log(O) < fused["first_loss"] < 2 * T * B * np.log(O)
  np.testing.assert_allclose(fused["first_loss"], autodiff["first_loss"], rtol=1e-5)
  assert fused["ratio_to_jaxrnn"] == 1.0
  assert len(fused["times_ms"]) == 3 and all(t > 0 for t in fused["times_ms"])


def test_roofline_follows_from_times(quick_train_step):
  fused = quick_train_step["results"]["jaxrnn_fused"]
  expected = (100 * quick_train_step["flops"] / (fused["ms"] / 1e3)
              / (quick_train_step["sgemm_gflops"] * 1e9))
  np.testing.assert_allclose(fused["roofline_pct"], expected, rtol=1e-12)
  assert quick_train_step["sgemm_gflops"] > 0.1
  assert quick_train_step["sizes"] == dict(zip("TBIHO", train_step.QUICK_CONFIGS["tiny"]))
  assert quick_train_step["flops"] == train_step.train_flops(*train_step.QUICK_CONFIGS["tiny"])


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


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory):
  """The ``jaxrnn/`` package of the release before this tree, from this checkout's history."""
  import compare_release  # pylint: disable=import-outside-toplevel
  try:
    rev = compare_release.previous_release()
    return rev, compare_release.export_revision(rev, tmp_path_factory.mktemp("previous"))
  except RuntimeError as error:
    pytest.skip(f"no earlier release in this checkout's git history ({error})")


def test_compare_release_runs_old_and_new_on_the_same_problem(previous_release, results):
  import compare_release  # pylint: disable=import-outside-toplevel
  rev, checkout = previous_release
  assert compare_release.version_at(rev) != train_step.jaxrnn.__version__
  payload = compare_release.main(["--quick", "--previous", str(checkout)])
  prev = sys.modules["jaxrnn_prev"]
  assert prev.__version__ == payload["prev_version"] == compare_release.version_at(rev)
  assert Path(prev.sequence_loss.__code__.co_filename).parts[-2] == "jaxrnn_prev"
  r = payload["configs"]["tiny"]
  # Same data, same weights, same summed cross-entropy: the two releases' losses agree.
  np.testing.assert_allclose(r["first_loss"]["old"], r["first_loss"]["new"], rtol=1e-5)
  np.testing.assert_allclose(r["ratio_new_over_old"],
                             np.median(r["times_ms"]["new"]) / np.median(r["times_ms"]["old"]),
                             rtol=1e-9)
  assert written(results, "compare_release_quick")["new_version"] == train_step.jaxrnn.__version__


LONG_STREAM = textwrap.dedent("""
    import json, pathlib, sys
    sys.path.insert(0, {benchmarks!r})
    import common
    common.RESULTS = pathlib.Path({results!r})
    import long_stream                               # starts 2 host devices: a fresh process
    long_stream.main(["--quick"])
""")


def test_long_stream_quick_run_splits_and_agrees(tmp_path):
  """In a process of its own (2 host devices): the split of a contractive stream takes one round,
  does not fall back and agrees with the sequential ``infer``; every row is reported."""
  env = process_env(cache=tmp_path / "compiled")
  done = subprocess.run([sys.executable, "-c", LONG_STREAM.format(benchmarks=str(BENCHMARKS),
                                                                  results=str(tmp_path))],
                        env=env, capture_output=True, text=True, check=False, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  payload = written(tmp_path, "long_stream_quick")
  main = payload["main"]
  assert main["iterations"] == 1 and not main["fell_back"] and main["max_rel_diff"] < 1e-4
  assert 0 < main["rerun_steps"] < payload["sizes"]["T"] / 2
  assert [r["gain"] for r in payload["sweep"]] == [0.5, 3.0]
  assert all(r["split_s"] > 0 and r["sequential_s"] > 0 for r in payload["sweep"])


def test_irnn_adding_quick_run_learns_and_reports(results):
  import irnn_adding  # pylint: disable=import-outside-toplevel
  payload = irnn_adding.main(["--quick", "--lr", "0.01"])
  assert [(r["T"], r["model"], r["status"]) for r in payload["runs"]] == [(10, "irnn", "ok"),
                                                                          (10, "tanh", "ok")]
  for run in payload["runs"]:
    assert [s for s, _ in run["curve"]] == [0, 10, 20]
    # Adam at lr 0.01 on T = 10 gets below its own starting test MSE in 20 steps.
    assert run["final_test_mse"] < run["curve"][0][1], run
    assert run["final_test_mse"] == run["curve"][-1][1]
    assert run["solved"] == (run["final_test_mse"] < 1 / 60)        # 10% of predicting 1
  assert written(results, "irnn_adding_quick")["budget"] == {
      "steps": 20, "batch": 32, "hidden": 8, "lr": 0.01, "decay": True, "optimizer": "adam",
      "clip": 1.0, "tanh_scheme": "orthogonal", "eval_every": 10, "test_size": 64, "seed": 0}


def test_scaling_quick_run_reports_every_method(results):
  import scaling  # pylint: disable=import-outside-toplevel
  payload = scaling.main(["--quick"])
  (row,) = payload["rows"]
  assert row["T"] == 10 and set(row["methods"]) == set(scaling.METHODS)
  for method in row["methods"].values():
    assert method["step_ms"] > 0 and method["temp_mb"] >= 0 and method["total_mb"] > 0
  B, I, H, _ = scaling.SIZES
  assert row["hs_plus_inputs_mb"] == 4 * 10 * B * (H + I + 1) / 1e6
  assert written(results, "scaling_quick")["rows"] == json.loads(json.dumps(payload["rows"]))


def test_inference_quick_run_agrees_with_torch(results):
  pytest.importorskip("torch")
  import inference  # pylint: disable=import-outside-toplevel
  payload = inference.main(["--quick"])
  assert payload["max_abs_logit_diff_vs_torch"] < 1e-4 and payload["same_tokens_as_torch"]
  assert set(payload["throughput"]) == {"jaxrnn_unroll", "jaxrnn_infer", "torch"}
  assert set(payload["generation"]) == {"jaxrnn_loop", "jaxrnn_scan", "torch_loop"}
  assert written(results, "inference_quick")["tokens"] == 10


def test_eager_calls_quick_run_compiles_each_call_once(results):
  """``eager_calls.py --quick``: every call of its list ran, its second eager call compiled
  nothing, and the ratio is that of the medians."""
  import eager_calls  # pylint: disable=import-outside-toplevel
  payload = eager_calls.main(["--quick"])
  r = payload["results"]
  assert set(r) == set(eager_calls.CALLS) and written(results, "eager_calls_quick")["results"] == r
  assert all(x["compiles_second_call"] == 0 and x["first_call_ms"] > x["eager_ms"] > 0 for x in
             r.values()), r
  assert all(x["eager_over_jit"] == x["eager_ms"] / x["jit_ms"] for x in r.values())


def test_layers_quick_run_trains_the_same_model_every_way(results):
  """``layers.py --quick``: the five steps start from the same loss, near ``T B log O``; the
  ratios are those of the medians."""
  pytest.importorskip("flax", reason="needs Flax: pip install -e '.[flax]'")
  pytest.importorskip("equinox", reason="needs Equinox: pip install -e '.[equinox]'")
  import layers  # pylint: disable=import-outside-toplevel
  payload = layers.main(["--quick"])
  config = payload["configs"]["tiny"]
  r, nnx = config["results"], config["pairs"]["nnx"]
  assert set(r) == set(layers.IMPLS) and all(len(x["times_ms"]) == 2 for x in r.values())
  T, B, _, _, O = train_step.QUICK_CONFIGS["tiny"]
  first = r["jaxrnn_step"]["first_loss"]
  assert 0.5 * T * B * np.log(O) < first < 2 * T * B * np.log(O)
  np.testing.assert_allclose([x["first_loss"] for x in r.values()], first, rtol=1e-5)
  assert nnx["speedup_over_own"] == r["flax_nnx"]["ms"] / r["jaxrnn_nnx"]["ms"]
  assert nnx["over_functional"] == r["jaxrnn_nnx"]["ms"] / r["jaxrnn_step"]["ms"]
  assert written(results, "layers_quick")["configs"]["tiny"]["sizes"] == dict(
      zip("TBIHO", train_step.QUICK_CONFIGS["tiny"]))


def test_xla_cpu_flags_quick_run_times_each_option_in_its_own_process(results):
  """``xla_cpu_flags.py --quick`` with one option besides the default: a process each, the same
  first loss to float32 rounding (a loss near T B log O = 77; Eigen's threads reorder sums), the
  default's ratio to itself 1."""
  import xla_cpu_flags  # pylint: disable=import-outside-toplevel
  payload = xla_cpu_flags.main(["--quick", "--options", "eigen_single_thread"])
  rows = payload["configs"]["tiny"]["results"]
  assert list(rows) == ["default", "eigen_single_thread"], rows
  for row in rows.values():
    assert row["ms"] > 0 and row["cpu_ms"] > 0 and row["loss_difference"] < 1e-4, row
  default = rows["default"]
  assert default["loss_difference"] == 0 and default["speedup"] == 1.0, default
  assert len(default["rounds_ms"]) == 1, default
  assert written(results, "xla_cpu_flags_quick")["configs"]["tiny"]["results"][
      "eigen_single_thread"]["flags"] == "--xla_cpu_multi_thread_eigen=false"


def test_gpu_script_quick_rows_agree_with_the_float64_oracle(results):
  """The GPU script anywhere: off a GPU its kernel rows run the Pallas kernels interpreted."""
  import gpu  # pylint: disable=import-outside-toplevel
  payload = gpu.main(["--quick", "--configs", "tiny", "--impls", "jaxrnn_scan_highest",
                      "jaxrnn_kernel_highest", "--rounds", "1"])
  rows = payload["configs"]["tiny"]["results"]
  assert set(rows) == {"jaxrnn_scan_highest", "jaxrnn_kernel_highest"}, rows
  for row in rows.values():
    assert "error" not in row and row["forward_error"] < 1e-5 and row["train_ms"] > 0, row
  assert written(results, "gpu_quick")["configs"]["tiny"]["sizes"] == list(
      gpu.QUICK_CONFIGS["tiny"])


def test_chaos_quick_run_measures_the_known_rates(results):
  """``chaos.py --quick`` (N = 200): at ``g = 0.5`` the state dies out, ``J_t -> W_hh``, and
  ``lambda_1`` is ``log rho(W_hh)`` of each network (numpy's eigenvalues), to the transient of
  300 averaged steps; at ``g = 2`` it is chaotic, near the mean-field value (N = 1000 gets within
  0.005; N = 200 falls short by about 0.015, N = 100 by 0.03: a finite-size bias ~ 3 / N)."""
  import chaos  # pylint: disable=import-outside-toplevel
  payload = chaos.main(["--quick"])
  low, high = payload["rows"]
  assert (low["g"], high["g"]) == (0.5, 2.0) and len(low["measured"]) == 2
  assert low["theory"] == np.log(0.5) and low["q"] == 0
  np.testing.assert_allclose(low["measured"], low["log_radius"], atol=5e-3)
  assert high["mean"] > 0.1 and abs(high["mean"] - high["theory"]) < 0.03
  assert written(results, "chaos_quick")["rows"] == json.loads(json.dumps(payload["rows"]))


def test_mean_field_theory_meets_monte_carlo_and_its_series_near_one():
  """``chaos.mean_field`` (Gauss-Hermite) against 10^6 draws of ``z`` at ``g = 2``, and against
  its expansion at ``g = 1.001``: ``tanh^2 x = x^2 - 2/3 x^4 + 17/45 x^6`` and ``sech^4 x =
  1 - 2 x^2 + 7/3 x^4`` give ``1/g^2 = 1 - 2q + 17/3 q^2 + O(q^3)`` and ``lambda_1 =
  1/2 log((1 - 2q + 7 q^2) / (1 - 2q + 17/3 q^2)) = 2/3 q^2 (1 + O(q))``: the exponent leaves
  0 quadratically in ``q ~ g - 1`` (at ``g = 1.01`` the ``O(q)`` term is already 8 %)."""
  import chaos  # pylint: disable=import-outside-toplevel
  assert chaos.mean_field(0.5) == (0.0, np.log(0.5)) and chaos.mean_field(1.0) == (0.0, 0.0)
  q, lam = chaos.mean_field(2.0)
  a = np.sqrt(q) * np.random.default_rng(0).standard_normal(10**6)
  tanh2, sech4 = 4 * np.tanh(a) ** 2, 4 / np.cosh(a) ** 4
  assert abs(tanh2.mean() - q) < 5 * tanh2.std() / 1e3
  assert abs(0.5 * np.log(sech4.mean()) - lam) < 5 * sech4.std() / 1e3 / (2 * sech4.mean())
  q, lam = chaos.mean_field(1.001)
  q_series = (2 - np.sqrt(4 - 4 * 17 / 3 * (1 - 1 / 1.001 ** 2))) / (2 * 17 / 3)
  assert q == pytest.approx(q_series, rel=1e-3)
  assert lam == pytest.approx(2 / 3 * q * q, rel=0.02) and 0 < lam < 1e-6
