"""``python -m shmstore``: the command line (see :mod:`shmstore._commands`)."""

import sys

from ._commands import main

if __name__ == "__main__":
    sys.exit(main())
