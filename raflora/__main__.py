"""``python -m raflora ...``: the same command line as the ``raflora`` script."""

import sys

from raflora.cli import main

sys.exit(main())
