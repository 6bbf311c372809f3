"""``python -m app`` runs the ``omi-letta`` command."""

import sys

from app.cli import main

sys.exit(main())
