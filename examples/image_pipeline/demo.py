"""``conveyor demo``: the command line of the image pipeline demo.

Only the command is defined here, with light imports: the ``conveyor`` CLI imports this module
for every command it runs. The demo itself is :mod:`image_pipeline.demo_run`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from image_pipeline.config import DEFAULT_DIR, FAST_TIME_SCALE, WORKER_APP

DEFAULT_IMAGES = 40
DEFAULT_FAIL_RATE = 0.1


@click.command()
@click.option(
    "--images",
    default=DEFAULT_IMAGES,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Sample images to generate and process.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 16),
    help="Worker processes. 1 runs the worker inside the demo; more start that many "
    f"`conveyor worker {WORKER_APP}` processes.",
)
@click.option(
    "--concurrency",
    default=5,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Jobs at once in each worker (the seed's 5).",
)
@click.option(
    "--fail-rate",
    default=DEFAULT_FAIL_RATE,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of images given a fault: a flaky download or a corrupt file (0: none).",
)
@click.option(
    "--dir",
    "directory",
    default=DEFAULT_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Working directory: queue, app database, images, logs. Reused runs start afresh.",
)
@click.option(
    "--fast/--real-time",
    default=True,
    show_default=True,
    help=f"--fast runs the backoff {1 / FAST_TIME_SCALE:g}x faster (1 min -> 5 min -> 30 min "
    f"becomes {60 * FAST_TIME_SCALE:g} s -> {300 * FAST_TIME_SCALE:g} s -> "
    f"{1800 * FAST_TIME_SCALE:g} s); --real-time waits the seed's delays.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    help="Multiply the backoff delays by this instead (overrides --fast/--real-time).",
)
@click.option("--seed", default=7, show_default=True, help="Seed of the images and faults.")
def demo(
    images: int,
    workers: int,
    concurrency: int,
    fail_rate: float,
    directory: Path,
    fast: bool,
    time_scale: float | None,
    seed: int,
) -> None:
    """Run the seed's image pipeline end to end on the embedded SQLite engine.

    Generates sample images, processes them with Pillow in worker(s), injects a flaky
    download and a corrupt image, shows retries and the dead-letter queue live, and prints
    the commands to inspect and redrive it.
    """
    from rich.console import Console

    from image_pipeline.demo_run import DemoOptions, run_demo

    options = DemoOptions(
        images=images,
        workers=workers,
        concurrency=concurrency,
        fail_rate=fail_rate,
        directory=directory,
        time_scale=time_scale if time_scale is not None else (FAST_TIME_SCALE if fast else 1.0),
        seed=seed,
    )
    asyncio.run(run_demo(options, Console(highlight=False)))
