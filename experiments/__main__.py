"""``python -m experiments``: list, start and stop experiments, set flags, read the change log.
See :mod:`experiments.control` for the commands."""

from __future__ import annotations

import argparse
import json
import sys

import redis

from experiments.config import FLAGS, load_experiments
from experiments.control import ControlStore, describe
from streams.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    from experiments import control

    ap = argparse.ArgumentParser(prog="python -m experiments", description=control.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="declared experiments with their status, and the flags")
    for cmd in ("start", "stop"):
        sub.add_parser(cmd, help=f"{cmd} an experiment (every worker within seconds)").add_argument("name")
    f = sub.add_parser("flag", help="roll out, ramp or kill a feature")
    f.add_argument("name", choices=FLAGS)
    f.add_argument("--rollout", type=float, help="share of listeners outside experiments, 0..1")
    f.add_argument("--value", help="the policy flag's policy name")
    kill = f.add_mutually_exclusive_group()
    kill.add_argument("--kill", action="store_true", help="off for everyone now (experiment arms included)")
    kill.add_argument("--unkill", action="store_true")
    sub.add_parser("log", help="the control change log (newest first)")
    args = ap.parse_args(argv)
    settings = load_settings()
    try:
        experiments = load_experiments(settings.experiments_file)
        store = ControlStore(redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5), settings.redis_prefix)
        if args.cmd == "start" or args.cmd == "stop":
            store.set_status(experiments, args.name, "running" if args.cmd == "start" else "stopped")
        elif args.cmd == "flag":
            store.set_flag(args.name, rollout=args.rollout, value=args.value,
                           killed=True if args.kill else (False if args.unkill else None))
        if args.cmd == "log":
            print(json.dumps(store.log(), indent=2))
        else:
            print(json.dumps(describe(store.control(experiments, settings.gamification_enabled)), indent=2))
    except redis.ConnectionError as exc:
        print(f"error: Redis at {settings.redis_url} is not reachable ({exc}); start the stack (make up) "
              "or set ENCORE_REDIS_URL", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
