"""``python -m salmon`` is the ``salmon`` command."""

from salmon.cli import main

raise SystemExit(main())
