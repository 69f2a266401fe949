"""``python -m bnnkit`` (and ``torchrun -m bnnkit``) runs the command line."""

from bnnkit.cli import main

raise SystemExit(main())
