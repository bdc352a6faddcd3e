"""``python -m analysis --results results/records.jsonl --out figures``: every figure and summary.md.

Runs no model: everything is redrawn from stored records, so figures can be remade (or restyled)
on any machine that has the results file, long after the runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from analysis.load import DEFAULT_STORE, count_store, latest_per_config, load_results
from earlyexit.harness.results import EmptyResultsError

log = logging.getLogger("analysis")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_STORE, help="JSON Lines results store")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read runs from this W&B project")
    parser.add_argument("--all-repeats", action="store_true", help="keep every run of a repeated config")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load, draw, summarise; exit status 2 with the path named when there is nothing to analyse."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        df = load_results(args.results, wandb_project=args.wandb)
    except EmptyResultsError as err:
        print(
            f"error: {err}\n(`make demo` runs a small study on the embedded model and stores its records)",
            file=sys.stderr,
        )
        return 2
    counts = count_store(args.results) if args.results.exists() else None
    if not args.all_repeats:
        before = len(df)
        df = latest_per_config(df)
        if counts is not None:
            counts = replace(counts, repeats=before - len(df))
    from analysis.batch_figures import make_batch_figures
    from analysis.figures import make_all  # matplotlib only once there is something to draw
    from analysis.summary import write_summary

    written, skipped = make_all(df, args.out)
    # Speedup against batch size, per workload: only for records of batched runs (else one log line).
    batch_written, batch_skipped = make_batch_figures(df, args.out)
    written.update(batch_written)
    skipped.update(batch_skipped)
    source = str(args.results) + (f" + W&B {args.wandb}" if args.wandb else "")
    summary = write_summary(df, args.out, source, written, skipped, counts=counts)
    log.info("%d figure(s) written, %d skipped; summary in %s", len(written), len(skipped), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
