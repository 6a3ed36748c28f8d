"""`python -m densa ...` (and `torchrun -m densa ...`) run the command line."""

import sys

from densa.cli import main

sys.exit(main())
