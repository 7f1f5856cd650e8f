"""``python -m tomoguide`` runs the command line (see :mod:`tomoguide.cli`)."""

from tomoguide.cli import main

raise SystemExit(main())
