"""Crash campaign: ``python bench/fault_campaign.py --seed N [--kills K]``.

Runs the real ``lfsb-server`` against moto S3 (through a fault-injecting proxy) with a LiteFS emulator
writing all the time, injects K seeded faults (targeted crash points, plain ``kill -9`` and a few seconds
of storage errors or outage, see ``tests/campaign.py``), checks every recovery, and prints a summary
table. Exits 1 if any check found a mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.campaign import FULL_KILLS, Campaign
from tests.s3server import S3Server, create_bucket


def main() -> int:
    """Parse the arguments, run the campaign, print its summary; the exit status."""
    parser = argparse.ArgumentParser(description="Crash lfsb-server, break its storage, check recoveries.")
    parser.add_argument("--seed", type=int, required=True, help="seed of the fault schedule and workload")
    parser.add_argument(
        "--kills", type=int, default=FULL_KILLS, help=f"faults to inject (default {FULL_KILLS})"
    )
    parser.add_argument("--work", type=Path, help="keep the data, logs and emulator here (default: temp)")
    args = parser.parse_args()
    started = time.monotonic()
    with S3Server() as s3, tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        summary = asyncio.run(Campaign(work, create_bucket(s3.endpoint), args.seed, args.kills).run())
    print(f"crash campaign: seed {args.seed}, {args.kills} faults, {time.monotonic() - started:.0f} s\n")
    print(summary.table())
    for mismatch in summary.mismatches:
        print(f"MISMATCH {mismatch}")
    return 1 if summary.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
