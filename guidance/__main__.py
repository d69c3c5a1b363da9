"""``python -m guidance`` is the ``guidance`` command."""

import sys

from guidance.cli.main import main

sys.exit(main())
