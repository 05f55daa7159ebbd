"""``python -m sparse_eoc`` runs the command line."""

import sys

from sparse_eoc.cli import main

sys.exit(main())
