"""The README's examples run as written.

Every ```python block of README.md is executed, top to bottom, in one
namespace (a block may use what an earlier block defined), in a fresh Python
interpreter: the test session's ``jax_enable_x64`` (see ``conftest.py``) does
not leak into them, so they run with jax's defaults, as a reader's would.
The ``jaxrnn`` command
lines of the ```sh blocks are parsed by the real argument parser.
"""

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path


from jaxrnn.app.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```([\w-]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)

RUNNER = textwrap.dedent("""
    import json, sys
    blocks = json.load(sys.stdin)
    namespace = {"__name__": "__readme__"}
    for i, source in enumerate(blocks):
      exec(compile(source, f"README.md python block {i}", "exec"), namespace)
      print(f"README block {i} ran", flush=True)
""")


def blocks(language: str) -> list[str]:
  return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def run_blocks(sources: list[str]) -> str:
  """Runs ``sources`` cumulatively in one fresh interpreter; returns its stdout."""
  import json  # pylint: disable=import-outside-toplevel
  env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
  result = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(sources),
                          capture_output=True, text=True, env=env, timeout=300,
                          cwd=README.parent, check=False)
  assert result.returncode == 0, f"README example failed:\n{result.stdout}\n{result.stderr}"
  return result.stdout


def test_readme_has_the_api_example_and_the_two_set_up_commands():
  assert len(blocks("python")) >= 1
  shell = "\n".join(blocks("sh"))
  assert "pip install -e . && python -m jaxrnn" in shell            # install + demo
  assert 'pip install -e ".[test]" && python -m pytest -q -n 3' in shell


def test_python_blocks_run_in_order():
  sources = blocks("python")
  out = run_blocks(sources)
  for i in range(len(sources)):
    assert f"README block {i} ran" in out


def test_shell_command_lines_parse():
  """Each ``jaxrnn ...`` line of the ```sh and ```text blocks is a valid command line."""
  parser = build_parser()
  commands = [line.strip().removeprefix("$ ") for lang in ("sh", "text", "") for b in blocks(lang)
              for line in b.splitlines()
              if line.startswith("$ jaxrnn ") or (lang == "sh" and line.startswith("jaxrnn "))]
  assert len(commands) >= 3
  for line in commands:
    args = parser.parse_args(shlex.split(line)[1:])
    assert args.handler is not None, line


def test_the_pages_stay_short():
  """The README and the benchmarks page are for users: at most 200 and 265 lines (150 until
  0.4.0 added the transition to chaos, the long stream, the XLA:CPU options and the eager
  calls, a table each)."""
  assert len(README.read_text().splitlines()) <= 200
  assert len((README.parent / "benchmarks" / "README.md").read_text().splitlines()) <= 265
