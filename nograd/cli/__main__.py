"""`python -m nograd.cli`: the `nograd` command."""

import sys

from . import main

sys.exit(main())
