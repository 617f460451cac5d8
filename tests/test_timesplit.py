"""The time split (``mesh=`` with fewer sequences than devices, :func:`jaxrnn.split_time`) gives
the sequential chain: the NumPy reference's numbers for a contractive model, the library's
sequential chain (with ``fell_back``) for a chaotic one.

On one device in this process (bad input, the split of one segment); on two host CPU devices
in a subprocess (``jax_num_cpu_devices`` must be set before any computation), where a wrong
boundary, a correction that stops early or a missing fallback show.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxrnn
import reference
from conftest import process_env, random_params


def stream(seed, num_steps, sizes=(3, 5, 2), num_layers=1, bidirectional=False):
  params = random_params(seed, sizes, num_layers, bidirectional)
  rng = np.random.default_rng(seed + 1)
  xs = jnp.asarray(rng.standard_normal((num_steps, 1, sizes[0])))
  h0 = jnp.asarray(rng.standard_normal((num_layers * (1 + bidirectional), 1, sizes[1])))
  return params, xs, h0


def test_one_device_split_is_the_reference():
  params, xs, h0 = stream(0, 40, num_layers=2, bidirectional=True)
  hs, ys, final, stats = jax.jit(functools.partial(jaxrnn.split_time, mesh=1, chunk=8))(
      params, xs, h0)
  top, _, ref_final, _ = reference.forward(params, xs, h0)
  np.testing.assert_allclose(hs, top, atol=1e-12, rtol=0)
  np.testing.assert_allclose(ys, reference.readout(params, top), atol=1e-12, rtol=0)
  np.testing.assert_allclose(final, ref_final, atol=1e-12, rtol=0)
  assert stats.iterations.tolist() == [0] * 4 and stats.rerun_steps.tolist() == [0] * 4
  assert not stats.fell_back.any()


@pytest.mark.parametrize("kwargs,match", [
    (dict(tol=-1e-3), "tol"), (dict(tol=float("nan")), "tol"), (dict(tol=1.0), "tol"),
    (dict(tol="small"), "tol"), (dict(chunk=0), "chunk"), (dict(chunk=2.5), "chunk"),
    (dict(mesh=0), "mesh"), (dict(mesh=jax.device_count() + 1), "mesh"),
    (dict(mesh="all"), "mesh"), (dict(mesh=True), "mesh"),
    (dict(mesh=Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("a", "b"))), "mesh")])
def test_split_time_refuses_bad_options(kwargs, match):
  params, xs, h0 = stream(1, 5)
  with pytest.raises(ValueError, match=match):
    jaxrnn.split_time(params, xs, h0, **kwargs)


def test_bad_input_on_a_mesh():
  params, xs, h0 = stream(1, 5)
  with pytest.raises(ValueError, match="T >= 1"):
    jaxrnn.split_time(params, xs[:0], h0, mesh=1)
  with pytest.raises(ValueError, match="xs"):
    jaxrnn.split_time(params, xs.at[2, 0, 1].set(jnp.nan), h0, mesh=1)
  with pytest.raises(ValueError, match="key"):
    jaxrnn.unroll(params, xs, h0, mesh=1, key=jax.random.key(0))
  for call in (jaxrnn.unroll, jaxrnn.infer):
    with pytest.raises(ValueError, match="mesh"):
      call(params, xs, h0, mesh=-2)


TWO_DEVICES = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)          # before any computation: 2 host devices
jax.config.update("jax_enable_x64", True)
import chex, jax.numpy as jnp, numpy as np
sys.path.insert(0, {tests!r})
import reference
from test_timesplit import stream
import jaxrnn
assert len(jax.devices()) == 2, jax.devices()


def report(what, ok, **fields):
  print(json.dumps(dict(what=what, ok=bool(ok), **fields)), flush=True)


def close(a, b, rtol):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))


# contractive (||W_hh|| <= 1), against the NumPy reference: float64 to 1e-12, float32 to 1e-5
for dtype, tol, layers, bidi in ((jnp.float64, 1e-12, 1, False), (jnp.float64, 1e-12, 2, True),
                                 (jnp.float32, 1e-5, 1, False)):
  params, xs, h0 = stream(3, 600, (3, 6, 2), layers, bidi)
  top, _, final, _ = reference.forward(params, xs, h0)
  ys = reference.readout(params, top)
  cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)
  split, (final_i, ys_i), (hs_u, ys_u, final_u) = jax.jit(lambda p, x, h: (
      jaxrnn.split_time(p, x, h, mesh=2, chunk=32), jaxrnn.infer(p, x, h, mesh=2),
      jaxrnn.unroll(p, x, h, mesh=2)))(cast(params), cast(xs), cast(h0))
  err = max(close(split.hs, top, tol), close(split.ys, ys, tol), close(split.final, final, tol))
  stats = split.stats
  segment = 320                                       # 2 segments of 10 chunks of 32 for T = 600
  report("contractive", err <= tol and (stats.iterations == 1).all() and not stats.fell_back.any()
         and (stats.rerun_steps < segment).all(), case=[str(dtype), layers, bidi], err=err,
         stats=[s.tolist() for s in stats])
  err = max(close(ys_i, ys, tol), close(final_i, final, tol), close(hs_u, top, tol),
            close(ys_u, ys, tol), close(final_u, final, tol))
  report("infer-unroll", err <= tol, case=[str(dtype), layers, bidi], err=err)

# chaotic: W_hh = 3 N(0, 1/H): the correction never meets, the call falls back to the chain
params, xs, h0 = stream(4, 400, (3, 16, 2))
rng = np.random.default_rng(0)
(cell,), = params.layers
params = params._replace(layers=((cell._replace(W_hh=jnp.asarray(3 * rng.standard_normal((16, 16))
                                                                   / 4)),),))
split, (final_i, ys_i), sequential = jax.jit(lambda p, x, h: (
    jaxrnn.split_time(p, x, h, mesh=2, chunk=32), jaxrnn.infer(p, x, h, mesh=2),
    jaxrnn.unroll(p, x, h)))(params, xs, h0)
top = reference.forward(params, xs[:20], h0)[0]
err = max(close(a, b, 1e-12) for a, b in zip(split[:3], sequential))
report("chaotic", err <= 1e-12 and bool(split.stats.fell_back[0])
       and close(split.hs[:20], top, 1e-12) <= 1e-12
       and int(split.stats.rerun_steps[0]) == 224, err=err,
       stats=[s.tolist() for s in split.stats])
report("chaotic-infer", close(ys_i, sequential.ys, 1e-12) <= 1e-12
       and close(final_i, sequential.final, 1e-12) <= 1e-12)

# gradients through unroll(mesh=2): the hand-derived BPTT on the split states
params, xs, h0 = stream(5, 300, (3, 6, 2), 2, True)
loss = lambda mesh: lambda p, h: jnp.sum(jnp.sin(jaxrnn.unroll(p, xs, h, mesh=mesh).ys))
grads = [jax.jit(jax.grad(loss(mesh), argnums=(0, 1)))(params, h0) for mesh in (None, 2)]
err = max(jax.tree.leaves(jax.tree.map(lambda a, b: close(a, b, 1e-12), *grads)))
report("gradient", err <= 1e-12, err=err)

# B divisible by the devices: the batch split; B = 3 on 2 devices is refused; lengths and a
# dropout key are refused by the time split
params, xs, h0 = stream(6, 50)
rng = np.random.default_rng(1)
xs4, h04 = jnp.asarray(rng.standard_normal((50, 4, 3))), jnp.asarray(rng.standard_normal((1, 4, 5)))
lengths = jnp.array([50, 3, 0, 20])
top, _, final, _ = reference.forward(params, xs4, h04, lengths)
(hs_u, ys_u, final_u), (final_i, ys_i) = jax.jit(lambda p, x, h, n: (
    jaxrnn.unroll(p, x, h, n, mesh=2), jaxrnn.infer(p, x, h, n, mesh=2)))(params, xs4, h04, lengths)
err = max(close(hs_u, top, 0), close(final_u, final, 0), close(final_i, final, 0),
          close(ys_i, reference.readout(params, top, lengths=lengths), 0))
report("batch", err <= 1e-12, err=err)
for what, call in (("odd", lambda: jaxrnn.infer(params, xs4[:, :3], h04[:, :3], mesh=2)),
                   ("lengths", lambda: jaxrnn.unroll(params, xs, h0, jnp.array([9]), mesh=2)),
                   ("key", lambda: jaxrnn.unroll(params, xs, h0, mesh=2, key=jax.random.key(0)))):
  try:
    call()
    report("refused", False, case=what)
  except ValueError as error:
    word = dict(odd="divisible", lengths="lengths", key="key")[what]
    report("refused", word in str(error), case=what, error=str(error))
"""


def test_split_over_two_host_devices_is_the_sequential_chain(tmp_path):
  """On 2 devices: a contractive model (float64 to 1e-12, float32 to 1e-5, one and two
  bidirectional layers) equals the NumPy reference with one round and a short correction; a
  chaotic one falls back (``fell_back``, the whole second segment re-run) and equals the
  sequential chain; gradients through ``unroll(mesh=2)`` equal the unsplit ones; ``B = 4``
  splits the batch, ``B = 3``, ``lengths`` and a ``key`` on the time split are refused."""
  env = process_env(cache=tmp_path / "compiled")
  script = tmp_path / "two_devices.py"
  script.write_text(TWO_DEVICES.format(tests=os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert len(lines) == 13, result.stdout
  failed = [line for line in lines if not line["ok"]]
  assert not failed, failed
