"""Entry point of ``siptrio-tui``.

The monitor attaches to the server's control socket, which arrives with the admin
API; until then this command says so plainly instead of pretending to work.
"""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "siptrio-tui: the live monitor needs the server's control socket, "
        "which this version of siptrio does not provide yet.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
