"""``python -m cscapi.emulator``: see :mod:`cscapi.emulator.server`."""

from cscapi.emulator.server import main

raise SystemExit(main())
