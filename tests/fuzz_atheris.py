"""Coverage-guided fuzzing (atheris, i.e. libFuzzer) of the LTX decoder and of ingestion's check.

Run ``python tests/fuzz_atheris.py -runs=100000`` (any libFuzzer flag works: ``-max_total_time=600``,
``-rss_limit_mb=512``, a corpus directory…). Every input goes through :func:`tests.test_fuzz.check_decoder`:
``verify`` accepts it or raises ``LTXError``, ``inspect`` accepts it or raises a 4xx ``LfsbError``; anything
else is a crash, written by libFuzzer to ``crash-<sha1>`` in the working directory. libFuzzer's own limits
bound memory (``-rss_limit_mb``, 2048 by default) and time per input (``-timeout``, 1200 s by default).

Mutations start from the valid files of ``tests/test_fuzz.py`` (a custom mutator swaps one in whenever the
input is not an LTX file, and now and then anyway), so no corpus directory is needed, and nothing is written
to disk: ``inspect`` reads the input from an in-memory file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from random import Random

import atheris

REPO = Path(__file__).resolve().parents[1]
MAX_LEN = 1 << 18
"""Default ``-max_len``: room for the largest seed and then some."""
RESEED_RATE = 0.05
"""How often a mutation starts again from a seed although the input is an LTX file."""


def main() -> None:
    """Fuzz until libFuzzer's limits (``-runs``, ``-max_total_time``) are reached or a crash is found."""
    sys.path.insert(0, str(REPO))  # run as a script: ``tests`` is not importable otherwise
    with atheris.instrument_imports(include=["lfsb"]):
        from tests.test_fuzz import SEEDS, check_decoder

    seeds = [SEEDS[name] for name in sorted(SEEDS)]

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rng = Random(seed)
        if not data.startswith(b"LTX1") or rng.random() < RESEED_RATE:
            data = rng.choice(seeds)
        return atheris.Mutate(data, max(max_size, len(data)))

    def test_one_input(data: bytes) -> None:
        check_decoder(data)

    given = any(arg.startswith("-max_len=") for arg in sys.argv)
    argv = sys.argv if given else [*sys.argv, f"-max_len={MAX_LEN}"]
    atheris.Setup(argv, test_one_input, custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
