"""Test-suite set-up and the random problems every test module draws from.

float64 is on, so gradient checks can hold to 1e-10; JAX's backend starts
here with one CPU device; tests of float32
behaviour pass ``dtype=jnp.float32`` explicitly. The factories build arrays
with NumPy (no compiles) from an integer seed.
"""

import os
import random
import shutil
import socket
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                  "--xla_cpu_parallel_codegen_split_count=1")
"""XLA:CPU compiles this session's programs (and those of the processes it starts) without its
optimisation passes, each as one LLVM module (split in parts, a small program compiles slower on
two cores): the tests check numbers on tiny shapes, where compiling is most of the time.
Programs mean the same at any level; speed is measured in ``benchmarks/`` at XLA's default
level."""
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
jax.config.update("jax_enable_x64", True)
jax.devices()  # start the backend now: one CPU device, whatever a later cli.main asks for
# (cli.main makes every core a device only in a fresh process; tests that need that run it in a
# subprocess, so the device count of this process never depends on which test ran first)

MODELS = [(1, False), (2, True)]
"""(num_layers, bidirectional) of the two models every feature is tested on."""


def random_params(seed: int, sizes: tuple[int, int, int] = (3, 5, 2), num_layers: int = 1,
                  bidirectional: bool = False, dtype=jnp.float64,
                  max_norm: float | None = 1.0) -> jaxrnn.RNNParams:
  """An :class:`jaxrnn.RNNParams` with scaled-normal weights and small random biases.

  ``||W_hh||_2`` is capped at ``max_norm``: an exploding chain (e.g. ReLU with
  ``W_hh = 2.7``, ``H = 1``, 9 steps) saturates the outputs, and two correct
  gradients computed in different orders then differ by more than 1e-10 from
  rounding alone (seen: 2.2e-10 with a softmax squared error).
  """
  in_size, hidden, out_size = sizes
  rng = np.random.default_rng(seed)
  num_dirs = 2 if bidirectional else 1
  normal = lambda *shape: rng.standard_normal(shape)

  def cell(width):
    W_hh = normal(hidden, hidden) / np.sqrt(hidden)
    if max_norm is not None:
      W_hh = W_hh * min(1.0, max_norm / np.linalg.norm(W_hh, 2))
    return jaxrnn.CellParams(jnp.asarray(normal(hidden, width) / np.sqrt(width), dtype),
                             jnp.asarray(W_hh, dtype), jnp.asarray(0.1 * normal(hidden), dtype))

  layers = tuple(tuple(cell(in_size if l == 0 else num_dirs * hidden) for _ in range(num_dirs))
                 for l in range(num_layers))
  width = num_dirs * hidden
  return jaxrnn.RNNParams(layers, jnp.asarray(normal(out_size, width) / np.sqrt(width), dtype),
                          jnp.asarray(0.1 * normal(out_size), dtype))


class Problem(NamedTuple):
  params: jaxrnn.RNNParams
  batch: jaxrnn.Batch
  h0: jax.Array


def random_problem(seed: int, num_steps: int = 6, batch: int = 4, sizes=(3, 5, 2),
                   num_layers: int = 1, bidirectional: bool = False, loss: str = "cross_entropy",
                   masked: bool = False, dtype=jnp.float64) -> Problem:
  """Params, a batch (lengths in ``[0, T]`` and a random target mask when ``masked``) and ``h0``."""
  params = random_params(seed, sizes, num_layers, bidirectional, dtype)
  rng = np.random.default_rng(seed + 1000)
  in_size, hidden, out_size = sizes
  xs = jnp.asarray(rng.standard_normal((num_steps, batch, in_size)), dtype)
  if loss == "cross_entropy":
    targets = jnp.asarray(rng.integers(0, out_size, (num_steps, batch)))
  else:
    targets = jnp.asarray(rng.standard_normal((num_steps, batch, out_size)), dtype)
  lengths = target_mask = None
  if masked:
    lengths = jnp.asarray(rng.integers(0, num_steps + 1, batch))
    target_mask = jnp.asarray(rng.random((num_steps, batch)) < 0.7)
  num_states = num_layers * (2 if bidirectional else 1)
  h0 = jnp.asarray(0.5 * rng.standard_normal((num_states, batch, hidden)), dtype)
  return Problem(params, jaxrnn.Batch(xs, targets, lengths, target_mask), h0)

# On a GPU float32 matmuls default to TF32 (~1e-3): the tests' own jnp references compare at 1e-5.
jax.config.update("jax_default_matmul_precision", "highest")


def all_equations(jaxpr):
  """Every equation of ``jaxpr`` and of all the jaxprs inside it (``jit``, ``scan``,
  ``custom_vjp``, ...), depth first."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else [value]:
        sub = sub if hasattr(sub, "eqns") else getattr(sub, "jaxpr", None)
        if hasattr(sub, "eqns"):
          yield from all_equations(sub)


COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration",
                  "/jax/compilation_cache/cache_retrieval_time_sec")
"""The duration events of one compilation: by XLA, or read from the test process's persistent
cache (:func:`pytest_configure`)."""


def process_env(cache: "os.PathLike[str] | None" = None, **variables: str) -> dict[str, str]:
  """The environment of a process a test starts: this one's with JAX on the CPU, the test's XLA
  flags (not the caller's device count) and ``variables``; with ``cache``, a persistent
  compilation cache in that folder, which must be the process's own (JAX writes an entry in
  place: a process reading it while another writes could read half of it)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=TEST_XLA_FLAGS, **variables)
  if cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=os.fspath(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def free_port() -> int:
  """A loopback port ``P`` free with ``P + 1`` (a job's process 0 listens on both).

  Drawn below the kernel's ephemeral range (``ip_local_port_range``), where no outgoing connection
  takes its local port: a port from that range can be taken by another test's connection between
  this check and its use (seen: "could not start JAX's coordination service on port ...: Failed
  to start RPC server"). ``P = 2 w mod 2 n`` on xdist worker ``w`` of ``n`` (``gw0``, ``gw1``,
  ...): two workers never draw the same pair.
  """
  worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
  workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
  try:
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ports:
      ephemeral = int(ports.read().split()[0])
  except (OSError, ValueError, IndexError):
    ephemeral = 32768                                    # Linux's default
  ports = list(range(10000 + 2 * worker, ephemeral - 1 if ephemeral > 12000 else 65535,
                     2 * workers))
  random.SystemRandom().shuffle(ports)
  for port in ports:
    with socket.socket() as first, socket.socket() as second:
      try:
        first.bind(("127.0.0.1", port))
        second.bind(("127.0.0.1", port + 1))
      except OSError:
        continue
    return port
  raise RuntimeError("no two free loopback ports in a row")


def pytest_configure(config):
  """Gives each test process (the session, each xdist worker) a persistent compilation cache of
  its own, new and empty: a program built again (in another test, by a fresh ``jax.jit`` of the
  same function) is read back instead of compiled. Processes the tests start get none, so no
  process reads an entry another one is still writing."""
  config.compilation_cache = tempfile.mkdtemp(prefix="jaxrnn-tests-compiled-")
  jax.config.update("jax_compilation_cache_dir", config.compilation_cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def pytest_unconfigure(config):
  jax.config.update("jax_compilation_cache_dir", None)
  shutil.rmtree(config.compilation_cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Skips the tests marked ``gpu`` unless JAX's backend is a GPU."""
  import pytest  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "gpu":
    for item in items:
      if "gpu" in item.keywords:
        item.add_marker(pytest.mark.skip(reason="needs a GPU"))
