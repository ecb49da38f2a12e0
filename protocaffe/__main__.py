"""``python -m protocaffe COMMAND ...``: the same as the ``protocaffe`` command (and what torchrun's ``-m`` runs)."""
import sys

from protocaffe.cli import main

if __name__ == "__main__":
    sys.exit(main())
