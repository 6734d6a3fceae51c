"""``python -m tests.sim``: run seeds of the simulation; a failing seed prints one line that
reproduces it (``make sim SEED=<n>``)."""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator

from .mutations import MUTATIONS
from .scenario import PROFILES, Report, run_seed


def _reports(seeds: Iterable[int], jobs: int, mutation: str | None, profile: str | None) -> Iterator[Report]:
    run = functools.partial(run_seed, mutation=mutation, profile=profile)
    if jobs <= 1:
        yield from map(run, seeds)
        return
    with multiprocessing.Pool(jobs) as pool:
        yield from pool.imap(run, seeds, chunksize=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    parser.add_argument("--start", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument("--seed", type=int, help="run this one seed only, and say what it did")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--stop-after", type=int, default=0, help="stop after this many failing seeds")
    parser.add_argument("--mutation", choices=sorted(MUTATIONS), help="put a known bug back first")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="focus the swarm (scenario.PROFILES)")
    parser.add_argument("--jobs", type=int, default=1, help="processes to run seeds in (default 1)")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    started = time.monotonic()
    failed = 0
    kinds: Counter[str] = Counter()
    rows = invocations = inversions = 0
    count = 0  # seeds run (fewer than asked with --stop-after)
    for report in _reports(seeds, args.jobs, args.mutation, args.profile):
        seed = report.seed
        count += 1
        rows += report.rows
        invocations += report.invocations
        inversions += report.epoch_bump_inversions
        if args.verbose:
            print(
                f"seed {seed}: {report.rows} rows, {report.published} published, {report.dead} dead, "
                f"{report.invocations} invocations, {report.steps} steps; swarm "
                + ",".join(k for k, v in report.swarm.items() if v is True)
                + f" knobs {report.swarm['knobs']}"
            )
        if not report.ok:
            failed += 1
            names = sorted({v.name for v in report.violations})
            kinds.update(names)
            print(
                f"FAIL seed {seed}: {report.violations[0]}  [{', '.join(names)}]  -> {report.repro()}",
                flush=True,
            )
            if args.verbose:
                for v in report.violations[:20]:
                    print(f"    {v}")
            if args.stop_after and failed >= args.stop_after:
                break
    took = time.monotonic() - started
    print(
        f"{count} seeds, {failed} failed, {rows} rows, {invocations} invocations, {took:.1f} s"
        + f"; documented exception: first copies reordered by an epoch bump {inversions}"
        + (f"; failures by invariant: {dict(kinds)}" if kinds else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
