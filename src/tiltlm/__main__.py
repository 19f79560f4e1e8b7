"""`python -m tiltlm` == the `tiltlm` command."""

import sys

from tiltlm.cli import main

sys.exit(main())
