"""`python -m distill` is the `itr-distill` command."""
import sys

from distill.cli import main

sys.exit(main())
