import sys

from menet.cli import main

sys.exit(main())
