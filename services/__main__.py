"""`python -m services …` is the `clipjet` command."""

import sys

from services.cli import main

sys.exit(main())
