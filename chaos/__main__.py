"""``python -m chaos``: run fault-injection scenarios and print one JSON line per run.

Examples::

    python -m chaos                          # every scenario, CI size, on every engine
    python -m chaos crashes drain --seed 7   # some scenarios
    python -m chaos --full --out docs/chaos-full.jsonl

Each run works in its own directory under ``--dir`` (logs kept for a post-mortem) and is
reproducible from its seed: the seed picks the jobs, their fates and the moments of faults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from chaos.scenarios import ENGINES, SCENARIOS, run_scenario


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios; exit 1 if any run broke a promise."""
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)}")
    parser.add_argument("--engine", default=",".join(ENGINES), help="comma-separated engines")
    parser.add_argument("--seed", type=int, default=None, help="default: time-based, printed")
    parser.add_argument("--full", action="store_true", help="full size (tens of minutes)")
    parser.add_argument("--dir", type=Path, default=None, help="where runs keep their logs")
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here too")
    args = parser.parse_args(argv)
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {list(SCENARIOS)}")
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    base = args.dir or Path(tempfile.mkdtemp(prefix="chaos-"))
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    failed = 0
    for name in names:
        for engine in engines:
            if engine not in SCENARIOS[name].engines:
                continue
            result = asyncio.run(run_scenario(name, engine, seed, args.full, base))
            line = json.dumps(result)
            print(line, flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(line + "\n")
            failed += 0 if result.get("ok") else 1
    print(f"logs in {base}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
