"""`python -m discount_service.cli`: the same as the `discount` command."""

import sys

from .main import main

sys.exit(main())
