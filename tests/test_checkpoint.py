"""Checkpoints of the command line (:mod:`jaxrnn.app.checkpoint`): round trip, keep-last-N, and
saves killed half-way leave the previous one loadable."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import chex
import jax
import jax.numpy as jnp
import pytest

pytest.importorskip("orbax.checkpoint")

import jaxrnn
from jaxrnn.app import checkpoint
from jaxrnn.app.config import from_saved, resolve_config
from conftest import random_params


@pytest.fixture(autouse=True)
def close_managers(monkeypatch):
  """Closes every manager a test opens: an unclosed one's threads print 'Event loop is closed'
  when it is collected, in whichever test runs then."""
  opened, open_manager = [], checkpoint.manager
  monkeypatch.setattr(checkpoint, "manager", lambda *args, **kwargs: (
      opened.append(open_manager(*args, **kwargs)), opened[-1])[1])
  yield
  for manager in opened:
    manager.close()


def state_of(step: int) -> dict:
  """A small checkpoint state (a 2-layer bidirectional model) whose arrays all hold ``step``."""
  params = jaxrnn.init_params(jax.random.key(0), 2, 4, 1, dtype=jnp.float32, num_layers=2,
                              bidirectional=True)
  params = jax.tree.map(lambda x: jnp.full_like(x, step), params)
  optimizer = jaxrnn.make_optimizer("adam", 1e-3, clip_norm=1.0)
  return {"params": params, "opt_state": optimizer.init(params),
          "key": jax.random.key_data(jax.random.key(step)), "step": jnp.asarray(step, jnp.int32)}


def assert_trees_equal(a, b):
  """Same tree structure, and every leaf equal in shape, dtype and value."""
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_equal(a, b, strict=True)


def test_round_trip_keeps_structure_values_and_config(tmp_path):
  """A trained 2-layer bidirectional model's params and Adam state come back bit for bit."""
  params = random_params(0, (2, 4, 3), num_layers=2, bidirectional=True, dtype=jnp.float32)
  optimizer = jaxrnn.make_optimizer("adam", 1e-2, clip_norm=1.0)
  opt_state = optimizer.init(params)
  updates, opt_state = optimizer.update(jax.tree.map(jnp.sin, params), opt_state, params)
  params = jax.tree.map(jnp.add, params, updates)
  state = {"params": params, "opt_state": opt_state, "step": jnp.asarray(7, jnp.int32)}
  config = {"task": "adding", "text_file": None, "num_layers": 2, "bidirectional": True,
            "lr": 0.01}
  checkpoints = checkpoint.manager(tmp_path, keep=3)
  checkpoint.save(checkpoints, 7, state, config)
  assert checkpoint.manager(tmp_path, keep=3).latest_step() == 7   # a fresh manager
  assert checkpoint.saved_config(checkpoints, 7) == config
  like = jax.tree.map(jnp.zeros_like, state)
  restored = checkpoint.restore(checkpoints, 7, like)
  assert_trees_equal(restored, state)
  assert isinstance(restored["params"], jaxrnn.RNNParams)
  assert isinstance(restored["params"].layers[1][1], jaxrnn.CellParams)
  chex.assert_trees_all_equal_dtypes(restored, state)


def test_a_run_config_comes_back_equal(tmp_path):
  """The command's :class:`Config`, saved as JSON beside the state, reads back equal."""
  config = resolve_config("text", hidden_size=8, text_file="corpus.txt", vocab="\n ab\u00e9",
                          data_fingerprint="0123abcd")
  checkpoints = checkpoint.manager(tmp_path)
  checkpoint.save(checkpoints, 3, state_of(3), config.asdict())
  assert from_saved(checkpoint.saved_config(checkpoint.manager(tmp_path), 3)) == config


def test_keeps_the_last_n(tmp_path):
  checkpoints = checkpoint.manager(tmp_path, keep=2)
  for step in range(1, 6):
    checkpoint.save(checkpoints, step, state_of(step), {})
  assert checkpoints.all_steps() == [4, 5]
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["4", "5"]
  assert_trees_equal(checkpoint.restore(checkpoints, 4, state_of(0)), state_of(4))


def test_a_checkpoint_set_aside_twice_keeps_the_newer_one(tmp_path):
  """set_aside moves checkpoint STEP to FOLDER/STEP (no longer a checkpoint); a later one of the
  same step replaces it there, not nested inside it."""
  checkpoints = checkpoint.manager(tmp_path / "checkpoints")
  for value in (1, 2):
    checkpoint.save(checkpoints, 4, state_of(value), {"value": value})
    kept = checkpoint.set_aside(checkpoints, 4, tmp_path / "damaged")
    assert kept == tmp_path / "damaged" / "4" and checkpoints.all_steps() == []
  assert sorted(p.name for p in (tmp_path / "damaged").iterdir()) == ["4"]
  assert (tmp_path / "damaged" / "4" / "config" / "metadata").read_text() == '{"value": 2}'


def test_restore_with_other_shapes_raises(tmp_path):
  checkpoints = checkpoint.manager(tmp_path)
  checkpoint.save(checkpoints, 1, state_of(1), {})
  like = state_of(0)
  layers = like["params"].layers
  cell = layers[1][1]._replace(W_hh=jnp.zeros((5, 5), jnp.float32))
  like["params"] = like["params"]._replace(layers=(layers[0], (layers[1][0], cell)))
  with pytest.raises(ValueError, match=r"^params\.layers\.1\.1\.W_hh has shape \(4, 4\) in the "
                     r"checkpoint, not \(5, 5\)$"):
    checkpoint.restore(checkpoints, 1, like)                     # before reading any array


SAVER = textwrap.dedent("""
    import os, sys, jax, jax.numpy as jnp
    sys.path.insert(0, {tests!r})
    from test_checkpoint import state_of
    from jaxrnn.app import checkpoint
    from orbax.checkpoint._src.path import atomicity
    checkpoints = checkpoint.manager({directory!r}, keep=10)
    checkpoint.save(checkpoints, 1, state_of(1), {{"step": 1}})
    if {die_before_commit}:
      async def die(*args, **kwargs):
        os._exit(9)                     # killed after writing step 2, before its commit
      atomicity.AtomicRenameTemporaryPath.finalize = die
      checkpoint.save(checkpoints, 2, state_of(2), {{"step": 2}})
    step = 2
    while True:                         # save until killed
      checkpoint.save(checkpoints, step, state_of(step), {{"step": step}})
      step += 1
""")


def saver(directory, die_before_commit: bool) -> subprocess.Popen:
  code = SAVER.format(tests=os.path.dirname(__file__), directory=str(directory),
                      die_before_commit=die_before_commit)
  return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)


def test_process_killed_before_commit_leaves_previous_checkpoint(tmp_path):
  process = saver(tmp_path, die_before_commit=True)
  assert process.wait(timeout=120) == 9, process.stderr.read().decode()[-2000:]
  leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("2")]
  assert leftovers and all("tmp" in name for name in leftovers)   # step 2 died half-written
  checkpoints = checkpoint.manager(tmp_path, keep=10)
  assert checkpoints.latest_step() == 1
  assert_trees_equal(checkpoint.restore(checkpoints, 1, state_of(0)), state_of(1))
  checkpoint.save(checkpoints, 2, state_of(2), {"step": 2})      # the next save succeeds
  assert_trees_equal(checkpoint.restore(checkpoints, 2, state_of(0)), state_of(2))


@pytest.mark.parametrize("delay", [0.05, 0.25])
def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path, delay):
  process = saver(tmp_path, die_before_commit=False)
  deadline = time.monotonic() + 120
  while not (tmp_path / "2").exists():                            # saving in a loop by now
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    assert time.monotonic() < deadline
    time.sleep(0.01)
  time.sleep(delay)
  process.send_signal(signal.SIGKILL)
  process.wait()
  checkpoints = checkpoint.manager(tmp_path, keep=10)
  step = checkpoints.latest_step()
  assert step >= 2
  assert checkpoint.saved_config(checkpoints, step) == {"step": step}
  assert_trees_equal(checkpoint.restore(checkpoints, step, state_of(0)), state_of(step))


def test_non_finite_state_is_never_saved_and_never_restored(tmp_path):
  checkpoints = checkpoint.manager(tmp_path, keep=3)
  bad = state_of(1)
  bad["params"] = bad["params"]._replace(W_hy=bad["params"].W_hy.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match=r"refusing to save step 1: \['params'\].W_hy holds NaN"):
    checkpoint.save(checkpoints, 1, bad, {"step": 1})
  assert checkpoints.latest_step() is None and not list(tmp_path.iterdir())
  checkpoint.save(checkpoints, 2, state_of(2), {"step": 2})
  restored = checkpoint.restore(checkpoints, 2, state_of(0))
  assert_trees_equal(restored, state_of(2))
  # a checkpoint that holds inf (written by something else) is refused on the way back too
  orbax = checkpoint.orbax()
  inf = state_of(3)
  inf["params"] = jax.tree.map(lambda x: x * jnp.inf, inf["params"])
  checkpoints.save(3, args=orbax.args.Composite(state=orbax.args.StandardSave(inf),
                                                config=orbax.args.JsonSave({"step": 3})))
  checkpoints.wait_until_finished()
  with pytest.raises(checkpoint.CheckpointError, match="holds NaN or inf"):
    checkpoint.restore(checkpoints, 3, state_of(0))


class FullDisk:
  """A manager whose writes fail as a full disk does."""
  directory = "/full/disk"

  def save(self, *args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_failed_write_is_one_short_line():
  with pytest.raises(checkpoint.CheckpointError) as error:
    checkpoint.save(FullDisk(), 5, state_of(5), {"step": 5})
  assert str(error.value) == "could not write checkpoint 5 in /full/disk: no space left on device"
  long = ValueError("OUT_OF_RANGE: " + "tensorstore spec " * 40 + "\nsecond line")
  assert len(checkpoint.reason(long)) == 160 and "\n" not in checkpoint.reason(long)
