"""Sample images for the demo and the tests: varied sizes and formats, the operations to
apply to each, and which ones get a fault (a flaky download or a corrupt file)."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

from image_pipeline.models import Convert, OutputFormat, Resize

Fault = Literal["flaky", "corrupt"]

#: (width, height) of the originals, cycled: phone photos, screenshots, portraits, small ones.
SIZES: tuple[tuple[int, int], ...] = (
    (2400, 1600),
    (1600, 1200),
    (1920, 1080),
    (1200, 1600),
    (1024, 1024),
    (800, 600),
    (3000, 2000),
    (640, 480),
    (480, 640),
    (1280, 720),
)
#: Operation lists, cycled. The 2048 box on small originals shows that resizing never enlarges.
PLANS: tuple[tuple[Resize | Convert, ...], ...] = (
    (Resize(width=1024, height=1024), Convert(format="webp")),
    (Resize(width=800, height=800), Convert(format="avif")),
    (Resize(width=1600, height=900), Convert(format="jpeg")),
    (Resize(width=320, height=320), Convert(format="webp")),
    (Convert(format="webp"),),
    (Resize(width=2048, height=2048), Convert(format="avif")),
    (Resize(width=1200, height=1200), Resize(width=600, height=400), Convert(format="jpeg")),
)
#: Every how many images one is a PNG with transparency (the rest are JPEG photos).
PNG_EVERY = 5
#: PNG originals are kept smaller: lossless noise is big.
PNG_MAX_SIDE = 1024
JPEG_QUALITY = 90
USERS = 5
#: A corrupt original keeps this fraction of a valid file: a truncated upload.
CORRUPT_KEEP = 0.4


@dataclass(frozen=True)
class Sample:
    """One original image and what the demo will do with it."""

    image_id: str
    user_id: str
    data: bytes
    ext: str
    width: int
    height: int
    operations: tuple[Resize | Convert, ...]
    fault: Fault | None = None
    #: How many times the download fails first (flaky samples only).
    flaky_failures: int = 0


def render(width: int, height: int, label: str, rng: random.Random) -> Image.Image:
    """A photo-like picture: gradients, noise (so it compresses like a photo) and shapes."""
    channels = [
        Image.linear_gradient("L").resize((width, height)),
        Image.radial_gradient("L").resize((width, height)),
        # Noise at half size, scaled up: film-like grain at a quarter of the cost.
        Image.effect_noise((width // 2, height // 2), rng.uniform(20, 60)).resize((width, height)),
    ]
    rng.shuffle(channels)
    picture = Image.merge("RGB", channels)
    draw = ImageDraw.Draw(picture)
    for _ in range(rng.randint(6, 14)):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randint(width // 10, width // 3), rng.randint(height // 10, height // 3)
        fill = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=fill)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=fill)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(
            size=max(16, height // 12)
        )
    except (OSError, TypeError):  # Pillow without FreeType
        font = ImageFont.load_default()
    draw.text((width // 20, height // 20), label, fill=(255, 255, 255), font=font)
    return picture


def encode_original(picture: Image.Image, as_png: bool) -> tuple[bytes, str]:
    """The upload's bytes and extension: a JPEG photo, or a PNG with an alpha channel."""
    out = io.BytesIO()
    if as_png:
        picture = picture.convert("RGBA")
        picture.putalpha(
            Image.linear_gradient("L").resize(picture.size).point(lambda v: 128 + v // 2)
        )
        picture.save(out, "PNG", compress_level=1)
        return out.getvalue(), "png"
    picture.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), "jpg"


def make_image(index: int, image_id: str, seed: int) -> tuple[bytes, str, int, int]:
    """The healthy original of sample ``index``: (bytes, extension, width, height)."""
    rng = random.Random(f"{seed}:{index}")
    width, height = SIZES[index % len(SIZES)]
    as_png = index % PNG_EVERY == PNG_EVERY - 1
    if as_png:
        scale = min(1.0, PNG_MAX_SIDE / max(width, height))
        width, height = int(width * scale), int(height * scale)
    data, ext = encode_original(render(width, height, image_id, rng), as_png)
    return data, ext, width, height


def plan_faults(count: int, fail_rate: float, seed: int) -> dict[int, tuple[Fault, int]]:
    """Which samples get a fault: ``index -> (fault, flaky failures)``.

    ``fail_rate`` is the share of images with a fault. Whenever it is above zero and there
    are at least two images, there is at least one flaky download and one corrupt image, so
    both paths always show. About one fault in four is a corrupt image; flaky downloads fail
    twice, once, twice... (twice shows the 1 min -> 5 min spacing).
    """
    if fail_rate <= 0 or count < 1:
        return {}
    faulty = min(count, max(round(count * fail_rate), 2 if count >= 2 else 1))
    corrupt = max(1, faulty // 4) if faulty >= 2 else 0
    chosen = sorted(random.Random(seed).sample(range(count), faulty))
    random.Random(seed + 1).shuffle(chosen)
    plan: dict[int, tuple[Fault, int]] = {}
    for n, index in enumerate(chosen):
        if n < corrupt:
            plan[index] = ("corrupt", 0)
        else:  # twice, once, twice...
            plan[index] = ("flaky", 2 if (n - corrupt) % 2 == 0 else 1)
    return plan


def make_samples(
    count: int,
    *,
    fail_rate: float = 0.0,
    seed: int = 7,
    formats: Sequence[OutputFormat] = ("webp", "avif", "jpeg"),
) -> list[Sample]:
    """``count`` samples ``img-001``..., with faults per :func:`plan_faults`.

    Operations asking for a format not in ``formats`` are written as WebP instead.
    """
    faults = plan_faults(count, fail_rate, seed)
    samples = []
    for index in range(count):
        image_id = f"img-{index + 1:03d}"
        data, ext, width, height = make_image(index, image_id, seed)
        fault, failures = faults.get(index, (None, 0))
        if fault == "corrupt":
            data = data[: int(len(data) * CORRUPT_KEEP)]
        operations = tuple(
            Convert(format="webp") if isinstance(op, Convert) and op.format not in formats else op
            for op in PLANS[index % len(PLANS)]
        )
        samples.append(
            Sample(
                image_id=image_id,
                user_id=f"user-{index % USERS + 1}",
                data=data,
                ext=ext,
                width=width,
                height=height,
                operations=operations,
                fault=fault,
                flaky_failures=failures,
            )
        )
    return samples
