"""``python -m jaxrnn``: the ``jaxrnn`` command; with no arguments, the demo."""

import sys

from jaxrnn.app.cli import main

if __name__ == "__main__":
  sys.exit(main())
