"""python -m lvod: the lvod command line."""

import sys

from lvod.cli import main

sys.exit(main())
