"""``python -m menet``: the ``menet`` command (see menet.cli)."""

import sys

from menet.cli import main

sys.exit(main())
