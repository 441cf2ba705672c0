"""``python -m cnnlens.bench``: run a study, or write a report, without the main CLI.

    python -m cnnlens.bench --suite smoke --out bench-out [--device cpu] [--overwrite] [--no-progress]
    python -m cnnlens.bench --report bench-out/smoke.sqlite [--out DIR]
    python -m cnnlens.bench --suite FILE --engine ray [--workers N] [--address auto|ray://host:port]

Exit code 0 when every cell finished, 3 when some cells failed or were skipped (listed on stderr;
a rerun retries them unless --no-retry), 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cnnlens.bench", description=__doc__.splitlines()[0])
    p.add_argument("--suite", help="smoke, standard, gpu, or a suite TOML file")
    p.add_argument("--report", metavar="DB", help="write report.md and report.html for a study file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="output folder (default bench-out; for --report, next to DB)")
    p.add_argument("--overwrite", action="store_true", help="start the study fresh instead of resuming")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--engine", default="local", help="local (this process) or ray")
    p.add_argument("--workers", type=int, default=None, help="Ray workers (actors)")
    p.add_argument("--address", default=None, help="join a Ray cluster (auto, ray://host:port); default: start one")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per Ray worker on cuda (0.5 shares)")
    p.add_argument("--no-retry", action="store_true", help="on a resume, keep failed and skipped cells as they are")
    p.add_argument("--max-cells", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    from cnnlens.errors import CnnlensError

    try:
        if args.report:
            md, html = __import__("cnnlens.bench", fromlist=["report"]).report(args.report, args.out)
            print(md)
            print(html)
            return 0
        if not args.suite:
            p.error("give --suite or --report")
        import cnnlens.bench as bench

        db = bench.run(args.suite, device=args.device, out=args.out or "bench-out", overwrite=args.overwrite,
                       progress=not args.no_progress, max_cells=args.max_cells, engine=args.engine,
                       workers=args.workers, address=args.address, gpus_per_worker=args.gpus_per_worker,
                       retry=not args.no_retry)
        print(db)
        from cnnlens.bench.engine import failure_report

        failed = failure_report(db, "the same command")
        for line in failed:
            print(line, file=sys.stderr)
        return 3 if failed else 0
    except CnnlensError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
