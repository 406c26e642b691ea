"""Run a command several times in a row while other processes keep every CPU core busy.

    python scripts/under_load.py --burners 2 --times 3 -- .venv/bin/pytest -q tests/test_faults.py

The burners are plain Python busy loops, started before the first run and stopped by PID after
the last (or on the first failure). Exit status: that of the first failing run, else 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burners", type=int, default=2, help="busy processes beside the command (default 2)")
    parser.add_argument("--times", type=int, default=3, help="runs of the command in a row (default 3)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
    try:
        for i in range(1, args.times + 1):
            t0 = time.monotonic()
            code = subprocess.call(command)
            print(f"[under_load] run {i}/{args.times} beside {args.burners} busy processes: exit {code} "
                  f"in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
            if code:
                return code
        return 0
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
