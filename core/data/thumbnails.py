"""Small first-frame thumbnails of a dataset's clips, for the dataset page. Torch-free."""

from __future__ import annotations

import hashlib
from pathlib import Path

from core.data.video import UnreadableMedia, read_frames

THUMBS_DIR = ".thumbs"  # hidden: dataset discovery skips it


def thumbnail(media: Path, root: Path, size: int = 192) -> Path | None:
    """A JPEG of the clip's first frame (made once, then reused); None if unreadable."""
    from PIL import Image

    stat = media.stat()
    key = hashlib.blake2b(
        f"{media}:{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=10
    ).hexdigest()
    target = root / THUMBS_DIR / f"{key}.jpg"
    if target.is_file():
        return target
    try:
        frame = read_frames(media, [0])[0]
    except UnreadableMedia:
        return None
    image = Image.fromarray(frame)
    image.thumbnail((size, size))
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial")
    image.save(temporary, format="JPEG", quality=85)
    temporary.replace(target)
    return target
