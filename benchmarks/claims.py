"""Every claim of the founding papers, with a verdict that survives statistics: the claims table.

    python benchmarks/claims.py --out claims-out [--n 96] [--steps 10] [--models tinyworld,tinyworld-xl]
    python benchmarks/claims.py --small --out /tmp/claims-small          # the default test's size (minutes)

The same as ``erasekit claims``: the measurement, the labels and their calibrations are in
:mod:`erasekit.evaluate.claims_run`, the claims and their verdict rules in :mod:`erasekit.evaluate.claims`.
"""

from __future__ import annotations

import sys

from erasekit.evaluate.claims_run import main

if __name__ == "__main__":
    sys.exit(main(command="python benchmarks/claims.py"))
