"""``python -m bench``: run the benchmark suite (see bench/README.md).

Starts a private redis-server, measures the reference limits and every target, stops the
server, and writes ``bench/results/<stamp>.json`` and ``.md`` plus ``latest.md``, and the
table in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

from bench import raw, report
from bench.peers import ADAPTERS
from bench.suite import ROOT, RedisServer, Settings, log, measure

RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
ORDER = report.REDIS_TARGETS + report.SQLITE_TARGETS


def machine(server: RedisServer) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis": server.version(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }


def write(doc: dict[str, Any], stamp: str) -> Path:
    """Write JSON and Markdown, and the README's latest table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    md = report.render(doc)
    (RESULTS / f"{stamp}.md").write_text(md)
    if stamp.startswith("quick-"):  # a smoke run of the harness: not a result to show
        return path
    (RESULTS / "latest.md").write_text(md)
    if README.exists():
        text = README.read_text()
        # Under the README's own "## Latest results": every heading two levels down.
        nested = re.sub(r"^#", "###", md.strip(), flags=re.M)
        block = f"<!-- results -->\n{nested}\n<!-- /results -->"
        text = re.sub(r"<!-- results -->.*<!-- /results -->", lambda _: block, text, flags=re.S)
        README.write_text(text)
    return path


def main() -> None:
    """Parse options and run."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--targets", default=",".join(ORDER), help="comma-separated")
    parser.add_argument("--port", type=int, default=6390, help="port of the private Redis")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the harness")
    parser.add_argument("--no-raw", action="store_true", help="skip the reference limits")
    parser.add_argument(
        "--merge", type=Path, help="re-measure the targets into this results JSON (a re-run)"
    )
    args = parser.parse_args()
    names = [n for n in args.targets.split(",") if n]
    unknown = [n for n in names if n not in ADAPTERS]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(ORDER)}")
    settings = Settings(port=args.port, reps=args.reps)
    if args.quick:
        settings.drain_jobs, settings.single_n, settings.bulk_n = 2000, 500, 2000
        settings.latency_jobs = 100
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    began = time.monotonic()
    server = RedisServer(args.port, settings.workdir)
    server.start()
    log(f"redis-server {server.version()} on 127.0.0.1:{args.port}; work dir {settings.workdir}")
    if args.merge:
        doc = json.loads(args.merge.read_text())
        stamp = args.merge.stem
        rerun: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_start": [round(x, 2) for x in os.getloadavg()],
            "targets": {},
        }
        doc.setdefault("reruns", []).append(rerun)
        measured = rerun["targets"]
    else:
        stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
        if args.quick:
            stamp = f"quick-{stamp}"
        doc = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "settings": {k: v for k, v in vars(settings).items() if k != "workdir"},
            "machine": machine(server),
            "targets": {},
        }
        measured = doc["targets"]
    try:
        if not args.no_raw and not args.merge:
            log("reference limits")
            doc["raw"] = {
                "redis_py": raw.redis_py(args.port, settings.reps),
                "sqlite": raw.sqlite_wal(settings.workdir, settings.reps),
                "redis_benchmark": raw.redis_benchmark(args.port),
            }
        for name in names:
            log(f"== {name}")
            measured[name] = measure(name, settings, server)
            write(doc, stamp)  # keep what was measured if a later target hangs
    finally:
        server.stop()
        shutil.rmtree(settings.workdir, ignore_errors=True)
    if not args.merge:
        doc["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
        doc["seconds"] = time.monotonic() - began
    else:
        doc["reruns"][-1]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write(doc, stamp)
    log(f"results in {path} ({(time.monotonic() - began) / 60:.1f} min)")


if __name__ == "__main__":
    main()
