"""The batch split over devices (jaxrnn.parallel) gives the unsplit step's numbers.

On one device in this process; on two host CPU devices in a subprocess
(``XLA_FLAGS=--xla_force_host_platform_device_count=2`` must be set before
jax is imported), where a missing ``psum`` or a wrong ``mean`` scale shows.
"""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import jaxrnn
from jaxrnn.parallel import batch_mesh, make_parallel_train_step
from conftest import MODELS, random_problem

OPTIMIZER = optax.adam(1e-2)


def max_diff(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@functools.cache
def steps(reduction):
  loss = jaxrnn.LossSpec(reduction=reduction)
  return (jaxrnn.make_train_step(OPTIMIZER, loss=loss, donate=False),
          make_parallel_train_step(OPTIMIZER, loss=loss, donate=False))


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_split_step_equals_plain_step_on_one_device(num_layers, bidirectional, reduction):
  params, batch, _ = random_problem(11, num_layers=num_layers, bidirectional=bidirectional,
                                    masked=True)
  assert np.asarray(batch.lengths).min() < 6                     # some sequences end early
  plain_step, split_step = steps(reduction)
  state = OPTIMIZER.init(params)
  plain, split = plain_step(params, state, batch), split_step(params, state, batch)
  assert max_diff(split, plain) < 1e-12
  assert max_diff(plain[0], params) > 1e-3                       # the step moved the params


def test_mesh_checks():
  with pytest.raises(ValueError, match="num_devices"):
    batch_mesh(jax.device_count() + 1)
  with pytest.raises(ValueError, match="num_devices"):
    batch_mesh(0)


TWO_DEVICES = """
import functools, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)          # before any computation: 2 host devices
import jax.numpy as jnp, numpy as np, optax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {tests!r})
from conftest import random_params, random_problem
import jaxrnn
from jaxrnn.parallel import batch_mesh, make_parallel_train_step
assert len(jax.devices()) == 2, jax.devices()
diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
optimizer = optax.adam(1e-2)
for num_layers, bidirectional, reduction in [(1, False, "sum"), (1, False, "mean"),
                                             (2, True, "sum"), (2, True, "mean")]:
  params, batch, _ = random_problem(13, batch=6, num_layers=num_layers,
                                    bidirectional=bidirectional, masked=True)
  # all the live steps on the second device's half: a device-0-only result is way off
  batch = batch._replace(lengths=jnp.array([6, 0, 2, 6, 5, 4]))
  loss = jaxrnn.LossSpec(reduction=reduction)
  state = optimizer.init(params)
  plain = jaxrnn.make_train_step(optimizer, loss=loss, donate=False)(params, state, batch)
  split = jaxrnn.make_train_step(optimizer, loss=loss, donate=False, mesh=2)(params, state, batch)
  print("step", num_layers, bidirectional, reduction, diff(plain, split))
  for name, sq in (("ce", False), ("se", True)):
    p, b, _ = random_problem(17, batch=6, num_layers=num_layers, bidirectional=bidirectional,
                             masked=True, loss="squared_error" if sq else "cross_entropy")
    b = b._replace(lengths=jnp.array([6, 0, 2, 6, 5, 4]))
    ls = jaxrnn.LossSpec("squared_error" if sq else "cross_entropy", reduction)
    one = jaxrnn.make_eval_step(loss=ls)(p, b)
    two = jaxrnn.make_eval_step(loss=ls, mesh=2)(p, b)
    assert set(one) == set(two), (one, two)
    print("eval", num_layers, bidirectional, reduction + name, diff(one, two))
for num_layers in (1, 2):
  for reduction in ("sum", "mean"):
    params = random_params(3, num_layers=num_layers)
    rng = np.random.default_rng(0)
    stream = jaxrnn.Batch(jnp.asarray(rng.normal(size=(12, 4, 3))),
                          jnp.asarray(rng.integers(0, 2, (12, 4))))
    h0 = jnp.asarray(rng.normal(size=(num_layers, 4, 5)))
    loss = jaxrnn.LossSpec(reduction=reduction)
    epoch = lambda mesh: jax.jit(functools.partial(
        jaxrnn.tbptt_epoch, optimizer=optimizer, chunk_length=4, loss=loss, mesh=mesh))(
            params, optimizer.init(params), stream=stream, h0=h0)
    one, two = epoch(None), epoch(2)
    assert two.h.shape == one.h.shape
    print("tbptt", num_layers, False, reduction, diff(one, two))
make = jax.jit(lambda step: jaxrnn.data.copy_task(jax.random.fold_in(jax.random.key(3), step),
                                                  6, 4, 2, dtype=jnp.float64))
placed_make = jaxrnn.parallel.placed_batches(make, batch_mesh(2))
for step in (0, 5):
  whole, placed = make(step), placed_make(step)
  rows = [sorted({{s.data.shape[1] for s in x.addressable_shards}})
          for x in (placed.xs, placed.targets, placed.target_mask)]
  same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(placed)))
  print("placed", same, rows == [[3]] * 3, rows)
odd = batch._replace(xs=batch.xs[:, :5], targets=batch.targets[:, :5], lengths=batch.lengths[:5],
                     target_mask=batch.target_mask[:, :5])
params = random_params(13)
state = optimizer.init(params)
for what, call in (("step", lambda: make_parallel_train_step(optimizer)(params, state, odd)),
                   ("eval", lambda: jaxrnn.make_eval_step(mesh=2)(params, odd))):
  try:
    call()
    print("odd accepted")
  except ValueError as error:
    print("odd", "divisible" in str(error), error)
"""


def test_split_over_two_host_devices_equals_the_unsplit_one():
  """Train step, evaluation and truncated BPTT: split over 2 devices equals unsplit, float64."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  code = TWO_DEVICES.format(tests=os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.split("\n")
  diffs = [line.split() for line in lines if line and not line.startswith(("odd", "placed"))]
  assert [d[0] for d in diffs] == ["step", "eval", "eval"] * 4 + ["tbptt"] * 4, result.stdout
  for what, num_layers, bidirectional, reduction, diff in diffs:
    assert float(diff) < 1e-12, (what, num_layers, bidirectional, reduction, diff)
  assert sum(line.startswith("odd True") for line in lines) == 2, result.stdout          # B=5 over 2 devices raises
  placed = [line for line in lines if line.startswith("placed")]     # batches born split, same values
  assert placed == ["placed True True [[3], [3], [3]]"] * 2, result.stdout


TWO_PROCESSES = """
import sys
import jax
process, processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if processes > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{{port}}", num_processes=processes, process_id=process)
import jax.numpy as jnp, numpy as np, optax
sys.path.insert(0, {tests!r})
from conftest import random_problem
import jaxrnn
assert jax.process_count() == processes and jax.device_count() == 2, jax.devices()
params, batch, _ = random_problem(13, batch=6, num_layers=2, bidirectional=True, masked=True)
batch = batch._replace(lengths=jnp.array([6, 0, 2, 6, 5, 4]))
optimizer = optax.adam(1e-2)
step = jaxrnn.make_train_step(optimizer, model=jaxrnn.ModelSpec(dropout=0.3),
                              loss=jaxrnn.LossSpec(reduction="mean"), donate=False, mesh=2)
state = optimizer.init(params)
for i in range(3):
  params, state, metrics = step(params, state, batch, jax.random.key(i))
np.save({out!r} + f"/{{processes}}-{{process}}.npy",
        np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves((params, metrics))]))
"""


def test_two_processes_train_like_one_process(tmp_path):
  """jax.distributed on loopback (gloo CPU collectives), one device per process: 3 steps of the
  split step (2-layer bidirectional, dropout keys placed per process) equal one process with 2
  devices. The command line's jobs: test_cli."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  code = TWO_PROCESSES.format(tests=os.path.dirname(os.path.abspath(__file__)), out=str(tmp_path))
  runs = [subprocess.Popen([sys.executable, "-c", code, str(i), "2", port], env=env,
                           stderr=subprocess.PIPE, text=True) for i in range(2)]
  single_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  single = subprocess.run([sys.executable, "-c", code, "0", "1", port], env=single_env,
                          capture_output=True, text=True, timeout=300)
  for run in runs:
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]
  results = [np.load(tmp_path / name) for name in ("2-0.npy", "2-1.npy", "1-0.npy")]
  np.testing.assert_array_equal(results[0], results[1])      # both processes hold the same params
  np.testing.assert_allclose(results[0], results[2], rtol=1e-12, atol=1e-14)
