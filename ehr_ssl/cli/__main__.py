"""`python -m ehr_ssl.cli`: the `ehr-ssl` command (torchrun launches it so)."""

import sys

from ehr_ssl.cli import main

sys.exit(main())
