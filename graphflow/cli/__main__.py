"""`python -m graphflow.cli`: the same command as `graphflow`."""

import sys

from graphflow.cli import main

sys.exit(main())
