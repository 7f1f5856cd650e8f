"""Entry point of the frozen bundle: ``tomoguide [COMMAND ...]`` exactly as the installed command line.

PyInstaller freezes this script (see tomoguide.spec); it only calls :func:`tomoguide.cli.main`.
"""

import multiprocessing
import sys

from tomoguide.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # harmless when unused; needed if a library ever starts worker processes
    sys.exit(main())
