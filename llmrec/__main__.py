"""`python -m llmrec ...` runs the command line."""

import sys

from llmrec.cli import main

sys.exit(main())
