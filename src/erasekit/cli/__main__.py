"""`python -m erasekit.cli` (as `accelerate launch -m erasekit.cli` runs it)."""

import sys

from . import main

sys.exit(main())
