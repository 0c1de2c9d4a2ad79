"""``python -m image_pipeline.repair IMAGE_ID...``: replace a broken original with a healthy
picture, the "fix" to make before redriving a dead-lettered job in the demo.

Uses the same environment as :mod:`image_pipeline.worker` (``PIPELINE_DIR``...).
"""

from __future__ import annotations

import asyncio
import re

import click

from image_pipeline.db import Image
from image_pipeline.pipeline import Pipeline
from image_pipeline.samples import make_image

_INDEX = re.compile(r"-(\d+)$")


async def repair_original(pipeline: Pipeline, image_id: str, seed: int = 7) -> Image:
    """Upload a healthy picture over the original of ``image_id`` (same key) and reset its
    record to "uploaded"; raises ``LookupError`` for an unknown image."""
    image = await asyncio.to_thread(pipeline.db.get_image, image_id)
    if image is None:
        raise LookupError(f"no image {image_id!r} in {pipeline.db!r}")
    match = _INDEX.search(image_id)
    index = int(match.group(1)) - 1 if match else 0
    data, _ext, _w, _h = make_image(index, image_id, seed)
    await asyncio.to_thread(pipeline.storage.put, image.original_key, data)
    return await asyncio.to_thread(
        pipeline.db.save_image,
        image_id,
        user_id=image.user_id,
        original_key=image.original_key,
        original_size=len(data),
    )


@click.command()
@click.argument("image_ids", nargs=-1, required=True)
def main(image_ids: tuple[str, ...]) -> None:
    """Replace the originals of IMAGE_IDS with healthy pictures."""
    from image_pipeline.worker import pipeline

    async def run() -> None:
        try:
            for image_id in image_ids:
                image = await repair_original(pipeline, image_id)
                click.echo(f"repaired {image.original_key} ({image.original_size:,} bytes)")
        finally:
            await pipeline.close()

    try:
        asyncio.run(run())
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()
