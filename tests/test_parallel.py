"""The batch split over devices (``mesh=``) gives the unsplit numbers, dropout masks included,
and the split steps compile once.

On one device in this process; on two host CPU devices in a subprocess
(``jax_num_cpu_devices`` must be set before any computation), where a missing ``psum``, a
wrong ``mean`` scale, masks drawn per device or a step that recompiles show.
"""

import functools
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import optax
import pytest

import jaxrnn
from conftest import MODELS, TEST_XLA_FLAGS, free_port, process_env, random_problem
from jaxrnn.parallel import batch_mesh

OPTIMIZER = optax.adam(1e-2)
DROPOUT = jaxrnn.ModelSpec(dropout=0.3, input_dropout=0.3, state_dropout=0.3)


@functools.cache
def steps(reduction):
  loss = jaxrnn.LossSpec(reduction=reduction)
  return (jaxrnn.make_train_step(OPTIMIZER, loss=loss, donate=False),
          jaxrnn.make_train_step(OPTIMIZER, loss=loss, donate=False, mesh=1))


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_split_step_equals_plain_step_on_one_device(num_layers, bidirectional, reduction):
  params, batch, _ = random_problem(11, num_layers=num_layers, bidirectional=bidirectional,
                                    masked=True)
  assert np.asarray(batch.lengths).min() < 6                     # some sequences end early
  plain_step, split_step = steps(reduction)
  state = OPTIMIZER.init(params)
  plain, split = plain_step(params, state, batch), split_step(params, state, batch)
  chex.assert_trees_all_close(split, plain, atol=1e-12, rtol=0)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), plain[0], params)
  assert max(jax.tree.leaves(moved)) > 1e-3                     # the step moved the params


def test_placing_keeps_every_kind_of_leaf():
  """NumPy arrays (copied per device), jax arrays, Python numbers and PRNG keys are placed with
  their values, shapes and dtypes (an optimizer's state may hold any of them)."""
  tree = {"numpy": np.arange(12.0).reshape(3, 4)[:, ::2], "jax": jax.numpy.ones((2, 3)),
          "scalar": np.float32(2.5), "python": 1.5, "key": jax.random.key(4)}
  placed = jaxrnn.parallel.replicate(tree, batch_mesh(1))
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(placed))
  np.testing.assert_array_equal(placed["numpy"], tree["numpy"])
  assert placed["scalar"].shape == () and float(placed["scalar"]) == 2.5
  assert float(placed["python"]) == 1.5
  np.testing.assert_array_equal(jax.random.key_data(placed["key"]),
                                jax.random.key_data(tree["key"]))


@pytest.mark.parametrize("num_layers,bidirectional", MODELS[:1])
def test_loss_and_grad_and_evaluate_on_a_one_device_mesh(num_layers, bidirectional):
  """``mesh=1`` (and a Mesh object) equals no mesh, dropout masks included (2 devices and the
  deeper model: the subprocess test below)."""
  params, batch, _ = random_problem(12, num_layers=num_layers, bidirectional=bidirectional,
                                    masked=True)
  key = jax.random.key(3)
  run = lambda mesh, key=key: jax.jit(functools.partial(
      jaxrnn.loss_and_grad, model=DROPOUT, mesh=mesh))(params, batch, key=key)
  evaluate = lambda mesh: jax.jit(functools.partial(jaxrnn.evaluate, mesh=mesh))(params, batch)
  plain = run(None)
  for mesh in (1, batch_mesh(1)):
    chex.assert_trees_all_close(run(mesh), plain, atol=1e-12, rtol=0)
  chex.assert_trees_all_close(evaluate(1), evaluate(None), atol=1e-12, rtol=0)
  assert abs(float(plain[0]) - float(run(None, None)[0])) > 1e-6  # the masks are on


def test_mesh_checks():
  with pytest.raises(ValueError, match="num_devices"):
    batch_mesh(jax.device_count() + 1)
  with pytest.raises(ValueError, match="num_devices"):
    batch_mesh(0)
  with pytest.raises(ValueError, match="^mesh="):                     # the argument's own name
    jaxrnn.make_eval_step(mesh=jax.device_count() + 1)


TWO_DEVICES = """
import collections, dataclasses, functools, json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)          # before any computation: 2 host devices
import chex, jax.numpy as jnp, numpy as np, optax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {tests!r})
from conftest import COMPILE_EVENTS, random_params, random_problem
import jaxrnn
from jaxrnn.app import data
from jaxrnn.parallel import batch_mesh, placed_batches
assert len(jax.devices()) == 2, jax.devices()


def report(what, *case, **fields):
  print(json.dumps(dict(what=what, case=" ".join(map(str, case)), **fields)), flush=True)


def same(what, case, a, b, atol=1e-12):
  try:
    chex.assert_trees_all_close(a, b, atol=atol, rtol=0)
    report(what, *case, ok=True)
  except AssertionError as error:
    report(what, *case, ok=False, error=str(error)[-1500:])


optimizer = optax.adam(1e-2)
dropout = jaxrnn.ModelSpec(dropout=0.3, input_dropout=0.3, state_dropout=0.3)
lengths = jnp.array([6, 0, 2, 6, 5, 4])   # most live steps on the second device's half
for num_layers, bidirectional, reduction in [(1, False, "sum"), (2, True, "mean")]:
  params, batch, _ = random_problem(13, batch=6, num_layers=num_layers,
                                    bidirectional=bidirectional, masked=True)
  batch = batch._replace(lengths=lengths)
  loss = jaxrnn.LossSpec(reduction=reduction)
  model, key = (dropout, jax.random.key(5)) if reduction == "mean" else (jaxrnn.ModelSpec(), None)
  state = optimizer.init(params)
  make = lambda mesh: jaxrnn.make_train_step(optimizer, model=model, loss=loss, donate=False,
                                             mesh=mesh)
  same("step", (num_layers, bidirectional, reduction), make(None)(params, state, batch, key),
       make(2)(params, state, batch, key))
  for name, squared in ((("ce", False),) if reduction == "sum" else (("se", True),)):
    p, b, _ = random_problem(17, batch=6, num_layers=num_layers, bidirectional=bidirectional,
                             masked=True, loss="squared_error" if squared else "cross_entropy")
    b = b._replace(lengths=lengths)
    ls = jaxrnn.LossSpec("squared_error" if squared else "cross_entropy", reduction)
    one = jaxrnn.make_eval_step(loss=ls, mesh=None)(p, b)
    two = jaxrnn.make_eval_step(loss=ls, mesh=2)(p, b)
    same("eval", (num_layers, bidirectional, reduction, name), one, two)

# dropout masks belong to the row, not the device: the split batch gets the unsplit masks
for num_layers, bidirectional, reduction in [(1, False, "sum"), (2, True, "mean")]:
  params, batch, _ = random_problem(19, batch=6, num_layers=num_layers,
                                    bidirectional=bidirectional, masked=True)
  loss = jaxrnn.LossSpec(reduction=reduction)
  run = lambda mesh, key: jax.jit(functools.partial(
      jaxrnn.loss_and_grad, model=dropout, loss=loss, mesh=mesh))(params, batch, key=key)
  key = jax.random.key(7)
  whole = run(None, key)
  same("dropout", (num_layers, bidirectional, reduction), whole, run(2, key))
  report("dropout-on", num_layers, bidirectional, reduction,
         ok=abs(float(whole[0]) - float(run(None, None)[0])) > 1e-6)

for num_layers, reduction in ((1, "sum"), (2, "mean")):
  params = random_params(3, num_layers=num_layers)
  rng = np.random.default_rng(0)
  stream = jaxrnn.Batch(jnp.asarray(rng.normal(size=(12, 4, 3))),
                        jnp.asarray(rng.integers(0, 2, (12, 4))))
  h0 = jnp.asarray(rng.normal(size=(num_layers, 4, 5)))
  loss = jaxrnn.LossSpec(reduction=reduction)
  model, key = (dropout, jax.random.key(9)) if reduction == "mean" else (jaxrnn.ModelSpec(), None)
  epoch = lambda mesh: jax.jit(functools.partial(
      jaxrnn.tbptt_epoch, jaxrnn.make_tbptt_step(optimizer, model=model, loss=loss, mesh=mesh),
      chunk_length=4))(params, optimizer.init(params), stream, h0=h0, key=key)
  one, two = epoch(None), epoch(2)
  same("tbptt", (num_layers, reduction), one, two)

make = jax.jit(lambda step: data.copy_task(jax.random.fold_in(jax.random.key(3), step),
                                           6, 4, 2, dtype=jnp.float64))
placed_make = placed_batches(make, batch_mesh(2))
for step in (0, 5):
  whole, placed = make(step), placed_make(step)
  rows = [sorted({{s.data.shape[1] for s in x.addressable_shards}})
          for x in (placed.xs, placed.targets, placed.target_mask)]
  chex.assert_trees_all_equal(whole, placed)
  report("placed", step, ok=rows == [[3]] * 3, rows=rows)

params, batch, _ = random_problem(13, batch=6, masked=True)
odd = jax.tree.map(lambda x: x[:5] if x.ndim == 1 else x[:, :5], batch)
state = optimizer.init(params)
for what, call in (("step", lambda: jaxrnn.make_train_step(optimizer, mesh=2)(params, state, odd)),
                   ("eval", lambda: jaxrnn.make_eval_step(mesh=2)(params, odd)),
                   ("loss_and_grad", lambda: jaxrnn.loss_and_grad(params, odd, mesh=2))):
  try:
    call()
    report("odd", what, ok=False, error="B=5 accepted")
  except ValueError as error:
    report("odd", what, ok="divisible" in str(error), error=str(error))

# the default mesh="auto": every device where they divide B (the numbers of mesh=2), else one
devices = lambda tree: sorted({{len(x.sharding.device_set) for x in jax.tree.leaves(tree)}})
for size, want in ((6, 2), (5, 1)):
  b = jax.tree.map(lambda x: x[:size] if x.ndim == 1 else x[:, :size], batch)
  split_over = 2 if want == 2 else None
  auto = jaxrnn.make_train_step(optimizer, donate=False)(params, state, b)
  same("auto", ("step", size), auto, jaxrnn.make_train_step(optimizer, donate=False,
                                                            mesh=split_over)(params, state, b))
  report("auto", "step-devices", size, ok=devices(auto[0]) == [want], devices=devices(auto[0]))
  same("auto", ("eval", size), jaxrnn.make_eval_step()(params, b),
       jaxrnn.make_eval_step(mesh=split_over)(params, b))
  same("auto", ("loss_and_grad", size), jaxrnn.loss_and_grad(params, b),
       jaxrnn.loss_and_grad(params, b, mesh=split_over))
  one = jaxrnn.loss_and_grad(params, b, mesh=None)
  report("auto", "one-device", size, ok=devices(one) == [1], devices=devices(one))

# the split step donates what it is given: the caller's arrays are deleted, and passing them again
# is refused (else it would train from the old parameters again)
fresh = random_problem(13, batch=6, masked=True).params
given, split_step = (fresh, optimizer.init(fresh)), jaxrnn.make_train_step(optimizer, mesh=2)
split_step(*given, batch)
try:
  split_step(*given, batch)
  report("donated", ok=False, error="the donated arrays were taken again")
except ValueError as error:
  report("donated", ok="donated to an earlier step" in str(error)
         and all(x.is_deleted() for x in jax.tree.leaves(given)), error=str(error))

# compiled once on the mesh: the traced bodies run once, XLA compiles nothing after the first call
compiles = collections.Counter()
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kwargs: compiles.update([event]))
count = lambda: sum(compiles[event] for event in COMPILE_EVENTS)   # compiled, or read from cache


def traced(fn, calls):
  def traced_fn(*args, **kwargs):
    calls.append(len(calls))
    return fn(*args, **kwargs)
  traced_fn.__name__ = "traced_" + fn.__name__
  return chex.assert_max_traces(traced_fn, n=1)


def retraces(call):
  try:
    call()
    return False
  except AssertionError as error:
    return "traced > 1 times" in str(error)


params, _, _ = random_problem(21, batch=6, masked=True)
batches = [random_problem(30 + i, batch=6, masked=True).batch for i in range(8)]
updates, sums = [], []
inner = optax.adam(1e-2)
traced_adam = optax.GradientTransformation(inner.init, traced(inner.update, updates))
step = jaxrnn.make_train_step(traced_adam, model=dropout, mesh=2)
state = traced_adam.init(params)
try:
  params, state, _ = step(params, state, batches[0], jax.random.key(0))
  before = count()
  losses = []
  for i, batch in enumerate(batches[1:]):
    params, state, metrics = step(params, state, batch, jax.random.key(i + 1))
    losses.append(float(metrics["loss"]))
  report("once-step", ok=updates == [0] and count() == before and len(set(losses)) == len(losses),
         traces=len(updates), compiles=count() - before)
except AssertionError as error:
  report("once-step", ok=False, error=str(error)[:300])
evaluation_sums = jaxrnn.train.evaluation_sums
jaxrnn.train.evaluation_sums = traced(evaluation_sums, sums)
evaluate = jaxrnn.make_eval_step(mesh=2)
try:
  evaluate(params, batches[0])
  before = count()
  results = [float(evaluate(params, batch)["loss"]) for batch in batches[1:]]
  report("once-eval", ok=sums == [0] and count() == before and len(set(results)) == len(results),
         traces=len(sums), compiles=count() - before)
except AssertionError as error:
  report("once-eval", ok=False, error=str(error)[:300])
other = batches[0]._replace(targets=batches[0].targets.astype(jnp.int32))
report("retrace-dtype", ok=retraces(lambda: step(params, state, other, jax.random.key(0)))
       and retraces(lambda: evaluate(params, other)))
report("retrace-rebuilt", ok=retraces(
    lambda: jaxrnn.make_train_step(traced_adam, model=dropout, mesh=2)(
        params, state, batches[0], jax.random.key(0)))
       and retraces(lambda: jaxrnn.make_eval_step(mesh=2)(params, batches[0])))
jaxrnn.train.evaluation_sums = evaluation_sums
before = count()
jaxrnn.make_eval_step(mesh=2)(params, batches[0])
report("recompile-rebuilt", ok=count() > before)
"""


def test_split_over_two_host_devices_equals_the_unsplit_one_and_compiles_once(tmp_path):
  """On 2 devices, float64: the train step, evaluation, loss_and_grad with dropout and truncated
  BPTT equal the unsplit ones (a split batch gets the unsplit dropout masks); batches can be
  born split; an odd batch raises; the default mesh splits where the devices divide B (and
  not elsewhere); the split step deletes the arrays it was given and refuses them again; the
  split train and eval steps trace and compile once over
  many batches of one shape (and a recompile would be caught)."""
  env = process_env(cache=tmp_path / "compiled")
  script = tmp_path / "two_devices.py"          # a file: chex.assert_max_traces reads the source
  script.write_text(TWO_DEVICES.format(tests=os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  counts = {}
  for entry in reports:
    counts[entry["what"]] = counts.get(entry["what"], 0) + 1
  assert counts == {"step": 2, "eval": 2, "dropout": 2, "dropout-on": 2, "tbptt": 2, "placed": 2,
                    "odd": 3, "auto": 10, "donated": 1, "once-step": 1, "once-eval": 1,
                    "retrace-dtype": 1, "retrace-rebuilt": 1, "recompile-rebuilt": 1}, result.stdout
  failed = [entry for entry in reports if not entry["ok"]]
  assert not failed, json.dumps(failed, indent=1)


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
  port = str(free_port())
  env = process_env()
  code = TWO_PROCESSES.format(tests=os.path.dirname(os.path.abspath(__file__)), out=str(tmp_path))
  runs = [subprocess.Popen([sys.executable, "-c", code, str(i), "2", port], env=env,
                           stderr=subprocess.PIPE, text=True) for i in range(2)]
  single_env = dict(env,
                    XLA_FLAGS=f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=2")
  single = subprocess.run([sys.executable, "-c", code, "0", "1", port], env=single_env,
                          capture_output=True, text=True, timeout=300)
  for run in runs:
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]
  results = [np.load(tmp_path / name) for name in ("2-0.npy", "2-1.npy", "1-0.npy")]
  chex.assert_trees_all_equal(results[0], results[1])     # both processes hold the same params
  chex.assert_trees_all_close(results[0], results[2], rtol=1e-12, atol=1e-14)


def test_auto_mesh_is_one_device_here_and_a_bad_mesh_is_named():
  """In this one-device process ``"auto"`` splits nothing; a string other than ``"auto"`` fails
  where it is given, naming ``mesh``."""
  assert jaxrnn.parallel.resolve("auto", 4) is None and jaxrnn.parallel.resolve(None, 4) is None
  assert jaxrnn.parallel.resolve(2, 3) == 2                        # explicit: checked later
  for make in (lambda: jaxrnn.make_train_step(OPTIMIZER, mesh="all"),
               lambda: jaxrnn.make_eval_step(mesh="all"),
               lambda: jaxrnn.loss_and_grad(*random_problem(1)[:2], mesh="all")):
    with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh, a device count, "
                       "'auto' or None, got 'all'"):
      make()
