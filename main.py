"""Seed-compatible entry point: ``python main.py --mode train|test [flags]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works without installing

from attnopt.cli.commands import seed_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(seed_main())
