"""Jobs of several processes (``--coordinator HOST:PORT --num-processes N --process-id I``).

Process 0 starts the job's coordinator, a small process (``python -m jaxrnn.app.job``) on
``PORT``. Every process connects and sends its options; once all ``N`` have come with the same
ones, the coordinator runs JAX's coordination service on ``PORT + 1`` for them to join; else
each process stops with one line (options that differ, two with one ``--process-id``, one missing
after ``--join-timeout`` s). The connections stay open, and the kernel closes them however a
process ends: one that ends without saying it is done stops the others with one line, at any
moment. (The service outlives every process: where it dies with one, the others abort in C++.)
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import jax
from jax._src import distributed
from jax.experimental import multihost_utils

import jaxrnn
from jaxrnn.app.rundir import RunError

GRACE = 2.0  # seconds a process's own error has to arrive before its end is reported to others


def leave(status: int, message: str) -> None:
  """Prints ``message`` on the real stderr and ends now, past JAX's exit barrier (dead peers)."""
  print(message, file=sys.__stderr__, flush=True)
  sys.stdout.flush()
  os._exit(status)


def send(conn: socket.socket, **message: Any) -> None:
  """Sends ``message`` as one line of JSON; a peer already gone is not an error here."""
  try:
    conn.sendall((json.dumps(message) + "\n").encode())
  except OSError:
    pass


def receive(conn: socket.socket, timeout: float | None) -> dict[str, Any]:
  """The next line of JSON from ``conn``; ``{}`` at its end, on a timeout or on garbage."""
  conn.settimeout(timeout)
  line = b""
  try:
    while not line.endswith(b"\n"):
      if not (chunk := conn.recv(1)):
        return {}
      line += chunk
    message = json.loads(line)
  except (OSError, ValueError):
    return {}
  return message if isinstance(message, dict) else {}


def gather(server: socket.socket, address: str, num_processes: int,
           timeout: float) -> dict[int, socket.socket]:
  """The coordinator: each process's connection once all came alike, else tells each why, those
  that come after the reason was found too (until all came or ``timeout`` ran out)."""
  peers: dict[int, socket.socket] = {}
  deadline, error, first, told = time.monotonic() + timeout, None, None, 0
  while len(peers) + told < num_processes:
    server.settimeout(max(deadline - time.monotonic(), 0.01))
    try:
      conn, _ = server.accept()
    except TimeoutError:
      if error is None:
        missing = ", ".join(str(i) for i in range(num_processes) if i not in peers)
        error = (f"the job at {address} did not gather its {num_processes} processes within "
                 f"{timeout:g} s: no process with --process-id {missing} came")
      break
    hello = receive(conn, 5.0)
    if not isinstance(hello.get("options"), dict):
      conn.close()                        # not a jaxrnn process: ignored
      continue
    first = first or hello
    if error is None:
      if differ := sorted(k for k in {**hello["options"], **first["options"]}
                          if hello["options"].get(k) != first["options"].get(k)):
        error = ("the processes of this job were given different "
                 f"{', '.join('--' + k.replace('_', '-') for k in differ)}: start every process "
                 "with the same options")
      elif hello.get("version") != jaxrnn.__version__:
        error = f"the processes of this job run jaxrnn {jaxrnn.__version__} and {hello['version']}"
      elif hello.get("process_id") in peers:
        error = f"two processes of this job were given --process-id {hello['process_id']}"
      else:
        peers[hello["process_id"]] = conn
        continue
      for peer in peers.values():
        send(peer, error=error)
      told, peers = told + len(peers), {}
    send(conn, error=error)
    told += 1
  if error is None:
    return peers
  for conn in peers.values():
    send(conn, error=error)
  raise RunError(error)


def watch(peers: dict[int, socket.socket], who: int) -> None:
  """The coordinator, per process: if ``who`` ends before it is done, stops all the others."""
  while message := receive(peers[who], None):
    if "done" in message:
      return receive(peers[who], None)  # its end
  time.sleep(GRACE)
  for conn in peers.values():
    send(conn, stop=f"jaxrnn: error: process {who} of this job stopped (see its output); start "
                    "every process again (jaxrnn resume RUN_DIR goes on from the last checkpoint)")


def coordinate(server: socket.socket, address: str, num_processes: int, timeout: float) -> None:
  """The coordinator's life: gathers, runs JAX's service on ``PORT + 1``, watches to the end."""
  try:
    peers = gather(server, address, num_processes, timeout)
  except RunError:
    return
  port = int(address.rsplit(":", 1)[1]) + 1
  try:
    service = distributed._jax.get_distributed_runtime_service(f"[::]:{port}", num_processes)
  except Exception as error:  # jaxlib raises its own error types
    for conn in peers.values():
      send(conn, error=f"could not start JAX's coordination service on port {port}: {error}")
    return
  watchers = [threading.Thread(target=watch, args=(peers, who)) for who in peers]
  for conn, thread in zip(peers.values(), watchers):
    send(conn, go=True)
    thread.start()
  for thread in watchers:
    thread.join()
  service.shutdown()


def greet(address: str, process_id: int, options: dict[str, Any],
          timeout: float) -> socket.socket:
  """Says hello to the coordinator; the connection once the job is whole, else :class:`RunError`."""
  host, port = address.rsplit(":", 1)
  deadline = time.monotonic() + timeout
  while True:
    try:
      conn = socket.create_connection((host, int(port)), timeout=1.0)
      break
    except OSError:
      if time.monotonic() > deadline:
        raise RunError(f"no process 0 answered at {address} within {timeout:g} s: is it "
                       "started, with this --coordinator?") from None
      time.sleep(0.1)
  send(conn, process_id=process_id, options=options, version=jaxrnn.__version__)
  if "go" not in (reply := receive(conn, timeout + 10)):
    raise RunError(reply.get("error", f"no jaxrnn job answered at {address} (one that has "
                                      "already started, or another program)"))
  return conn


def heed(conn: socket.socket) -> None:
  """A thread per process: stops this process when the coordinator says so, or ends."""
  leave(2, receive(conn, None).get("stop", "jaxrnn: error: the job's coordinator stopped"))


def join(address: str, num_processes: int, process_id: int, timeout: float,
         options: dict[str, Any]) -> Callable[[], None]:
  """Gathers the job at ``HOST:PORT`` (process 0 starts the coordinator), each process with the
  same ``options``, and joins ``jax.distributed`` (gloo on CPUs). Returns ``done``, to call when
  this process ends well; :class:`RunError` when the job cannot start."""
  host, port = address.rsplit(":", 1)
  if process_id == 0:
    try:
      server = socket.create_server(("", int(port)))
    except OSError:                       # in use: by another process 0 or another program
      server = None
    if server is not None:
      with server:
        subprocess.Popen([sys.executable, "-m", __name__, str(server.fileno()), address,
                          str(num_processes), str(timeout)], pass_fds=[server.fileno()],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
  conn = greet(address, process_id, options, timeout)
  threading.Thread(target=heed, args=(conn,), daemon=True).start()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:    # the coordinator runs the service, not process 0 (private: JAX has no public call)
    with mock.patch.object(distributed._jax, "get_distributed_runtime_service",
                           lambda *args, **kwargs: None):
      jax.distributed.initialize(f"{host}:{int(port) + 1}", num_processes=num_processes,
                                 process_id=process_id, initialization_timeout=int(timeout) + 60)
  except Exception as error:  # jaxlib raises its own error types
    raise RunError(f"could not join the job at {address}: {error}".splitlines()[0]) from None
  sys.stdout.flush()
  saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)                     # gloo says "Rank N is connected" on stdout
  try:
    multihost_utils.sync_global_devices("jaxrnn: the job is whole")
  finally:
    os.dup2(saved, 1)
    os.close(saved)
    os.close(devnull)
  return lambda: send(conn, done=True)


if __name__ == "__main__":
  coordinate(socket.socket(fileno=int(sys.argv[1])), sys.argv[2], int(sys.argv[3]),
             float(sys.argv[4]))
