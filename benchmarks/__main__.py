"""``python -m benchmarks`` (from the repository root) or ``python -m bnnkit.benchmarks``: ``bnnkit bench``."""

import sys

# Imported under its installed name so that every suite registers into one registry,
# whichever name this package was started under.
from bnnkit.benchmarks.runner import main

sys.exit(main())
