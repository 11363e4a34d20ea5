import sys

from attnopt.cli import main

sys.exit(main())
