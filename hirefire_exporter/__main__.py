"""``python -m hirefire_exporter``: the ``hirefire-exporter`` command."""

import sys

from .cli import main

sys.exit(main())
