"""Pillow work: decode an original, apply operations, encode the result. Pure and synchronous;
the task runs these in a thread so the worker's event loop keeps its heartbeats going."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import PIL
from PIL import Image, ImageOps, UnidentifiedImageError, features

from conveyor import ConfigurationError
from image_pipeline.models import Convert, OutputFormat, Resize

#: File extension of each output format (``processed/<image_id>.<ext>``).
EXTENSIONS: dict[str, str] = {"webp": "webp", "avif": "avif", "jpeg": "jpg", "png": "png"}
#: Pillow's name for each format.
PIL_FORMATS: dict[str, str] = {"webp": "WEBP", "avif": "AVIF", "jpeg": "JPEG", "png": "PNG"}
#: ``PIL.features`` name of the codec each output format needs.
_CODECS: dict[str, str] = {"webp": "webp", "avif": "avif", "jpeg": "jpg"}
CONTENT_TYPES: dict[str, str] = {
    "webp": "image/webp",
    "avif": "image/avif",
    "jpeg": "image/jpeg",
    "png": "image/png",
}


class CorruptImage(ValueError):
    """The original cannot be decoded (truncated upload, not an image at all...)."""


@dataclass(frozen=True)
class Encoded:
    """An encoded result image."""

    data: bytes
    format: str  # "webp", "avif", "jpeg" or "png"
    width: int
    height: int

    @property
    def extension(self) -> str:
        """The file extension for :attr:`format`."""
        return EXTENSIONS[self.format]


def pillow_can_write(fmt: str) -> bool:
    """Whether the installed Pillow has the encoder for ``fmt``."""
    return bool(features.check(_CODECS[fmt]))


def check_formats(
    formats: Iterable[OutputFormat], can_write: Callable[[str], bool] = pillow_can_write
) -> None:
    """Fail at start-up, not in the middle of a job, when Pillow cannot write a format."""
    missing = [f for f in formats if not can_write(f)]
    if missing:
        names = ", ".join(f.upper() for f in missing)
        raise ConfigurationError(
            f"the installed Pillow {PIL.__version__} cannot write {names}. "
            "Install a Pillow built with it (AVIF is built in from Pillow 11.3; older versions "
            "need the pillow-avif-plugin package), or remove it from PipelineConfig.formats so "
            "that jobs asking for it are dead-lettered at once."
        )


def decode(data: bytes, name: str) -> Image.Image:
    """Open and fully load an original, upright (EXIF orientation applied).

    Raises :class:`CorruptImage` with the reason when the bytes are not a whole image.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()  # a truncated file fails here, not at open()
            source_format = (opened.format or "").lower()
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"{name} cannot be decoded: {exc}") from exc
    image.format = source_format.upper() or None
    return image


def source_format(image: Image.Image) -> str:
    """The format to keep when no ``Convert`` asks for another: the original's if we can write
    it, else PNG (lossless)."""
    name = (image.format or "").lower()
    return name if name in ("webp", "jpeg", "png") else "png"


def resize(image: Image.Image, op: Resize) -> Image.Image:
    """Fit inside ``op.width`` x ``op.height``, keeping the aspect ratio; never enlarge."""
    fitted = image.copy()
    fitted.thumbnail((op.width, op.height), Image.Resampling.LANCZOS)
    fitted.format = image.format
    return fitted


def encode(image: Image.Image, fmt: str, quality: int) -> Encoded:
    """Encode ``image`` as ``fmt`` ("webp", "avif", "jpeg" or "png")."""
    if fmt == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha and no palette
    elif image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA")
    out = io.BytesIO()
    options: dict[str, object] = {} if fmt == "png" else {"quality": quality}
    image.save(out, PIL_FORMATS[fmt], **options)
    return Encoded(out.getvalue(), fmt, image.width, image.height)


def target_format(operations: Iterable[Resize | Convert], default: str) -> str:
    """The format the last ``Convert`` asks for, else ``default``."""
    fmt = default
    for op in operations:
        if isinstance(op, Convert):
            fmt = op.format
    return fmt
