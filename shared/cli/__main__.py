"""`python -m shared.cli ...` is the `mldm` command."""
import sys

from shared.cli.main import main

sys.exit(main())
