import sys

from attnopt.cli.commands import main

sys.exit(main())
