"""Where the time goes, from a py-spy collapsed-stack file (``--format raw``).

    python -m bench.profile_summary bench/out/throughput-profile.txt [--top 25] [--match agents/,sinks/]

Prints each function's inclusive share of the samples (a function counts once per stack), the
busiest first; idle samples (the event loop waiting in select / epoll) are reported apart.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

IDLE = re.compile(r"\((?:selectors|base_events)\.py\)|select \(|epoll|_run_once|poll \(")


def summarise(path: Path) -> tuple[int, int, Counter[str]]:
    total = idle = 0
    inclusive: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        if "select" in leaf or "epoll" in leaf or "poll (" in leaf or "wait (threading" in leaf:
            idle += n
            continue
        for f in set(frames):
            inclusive[re.sub(r":\d+\)$", ")", f)] += n
    return total, idle, inclusive


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_summary")
    ap.add_argument("path", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="", help="only functions whose file path contains one of these")
    args = ap.parse_args(argv)
    total, idle, inclusive = summarise(args.path)
    keys = [m for m in args.match.split(",") if m]
    print(f"{total} samples, {idle / max(total, 1):.0%} idle (event loop or threads waiting)")
    shown = 0
    for name, n in inclusive.most_common():
        if keys and not any(k in name for k in keys):
            continue
        print(f"{n / total:6.1%}  {name}")
        shown += 1
        if shown >= args.top:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
