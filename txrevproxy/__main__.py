"""
C{python -m txrevproxy check CONFIG}: validate a configuration file and say
what it would run.
"""

from __future__ import annotations

import sys

from ._loader import ConfigError, load_config
from ._summary import summary

_USAGE = "usage: python -m txrevproxy check CONFIG"


def main(argv: list[str]) -> int:
    """
    Run the command line; returns the exit status.
    """
    if len(argv) != 2 or argv[0] != "check":
        print(_USAGE, file=sys.stderr)
        return 2
    try:
        config = load_config(argv[1])
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{argv[1]}: OK")
    for line in summary(config):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
