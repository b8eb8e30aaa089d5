"""``python -m cmbench.cli``: the same as ``cmbench``."""

import sys

from . import main

sys.exit(main())
