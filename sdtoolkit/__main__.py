"""Allows `python -m sdtoolkit`."""

import sys

from sdtoolkit.cli import main

sys.exit(main())
