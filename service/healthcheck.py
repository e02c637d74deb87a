"""Container healthcheck of a worker: `python -m nograd.service.healthcheck FILE MAX_AGE_SECONDS` exits 0 when the
worker touched FILE (its `--heartbeat-file`, after every heartbeat the broker accepted) within MAX_AGE_SECONDS."""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m nograd.service.healthcheck HEARTBEAT_FILE MAX_AGE_SECONDS", file=sys.stderr)
        return 2
    path, max_age = argv[0], float(argv[1])
    try:
        age = time.time() - os.path.getmtime(path)
    except OSError:
        print(f"unhealthy: no heartbeat file {path}", file=sys.stderr)
        return 1
    if age > max_age:
        print(f"unhealthy: last heartbeat {age:.0f} s ago", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
