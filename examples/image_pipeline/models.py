"""The job payload: which image to process and the operations to apply, validated on both ends.

Producers get a :class:`conveyor.PayloadInvalid` at enqueue for a negative size or an unknown
format, and workers validate the stored JSON again before running the job.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Largest width or height a resize box may ask for (JPEG's own limit).
MAX_DIMENSION = 65_535
#: Most operations one job may carry; a longer list is almost certainly a bug in the producer.
MAX_OPERATIONS = 20
#: Image ids become storage keys (``processed/<image_id>.webp``), so they are restricted to
#: characters that cannot climb out of a directory or need escaping in a URL.
IMAGE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

#: Output formats the pipeline writes.
OutputFormat = Literal["webp", "avif", "jpeg"]


class Resize(BaseModel):
    """Fit the image inside a ``width`` x ``height`` box, keeping its aspect ratio.

    The image is never enlarged: a 640x480 original with a 1024x1024 box stays 640x480.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["resize"] = "resize"
    width: Annotated[int, Field(gt=0, le=MAX_DIMENSION)]
    height: Annotated[int, Field(gt=0, le=MAX_DIMENSION)]


class Convert(BaseModel):
    """Write the result as ``webp``, ``avif`` or ``jpeg`` (the last ``Convert`` wins)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["convert"] = "convert"
    format: OutputFormat


#: One operation; JSON picks the class by its ``type`` field.
Operation = Annotated[Resize | Convert, Field(discriminator="type")]


class ImageProcessJob(BaseModel):
    """The seed's ``ImageProcessJob``: ids only, never the image bytes (the seed's
    "minimal payload" rule); the worker loads the rest from the database and storage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_id: Annotated[str, Field(pattern=IMAGE_ID_PATTERN)]
    user_id: Annotated[str, Field(min_length=1, max_length=128)]
    operations: Annotated[list[Operation], Field(min_length=1, max_length=MAX_OPERATIONS)]
