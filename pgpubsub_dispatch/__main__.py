"""``python -m pgpubsub_dispatch``: the same command line as ``pgpubsub-dispatch``.

See :mod:`pgpubsub_dispatch.cli` for the commands, the output format and the exit codes.
"""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
