"""``python -m nnkern ...`` runs the ``nnkern`` command line."""

import sys

from .cli import main

sys.exit(main())
