"""``python -m shmstore``: the command line (see :mod:`shmstore._commands`)."""

import sys

from ._commands import main

sys.exit(main())
