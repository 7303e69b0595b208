"""Reading a user's video, drawing detections on frames, writing frames or a video.

What this module holds:

- ``open_source(path, max_frames=None) -> VideoSource``: a video file (anything OpenCV's
  FFmpeg backend decodes: mp4, avi, mkv, mov, ...), a folder of frame images (sorted in
  natural order, so ``frame2.jpg`` comes before ``frame10.jpg``) or a single image (a
  one-frame video). ``VideoSource.frames()`` yields ``Frame(index, name, image)`` with
  ``image`` an RGB ``uint8`` array ``(H, W, 3)``, one frame at a time (nothing is held).
- ``read_image(path) -> np.ndarray``: one image file as RGB ``uint8 (H, W, 3)``.
- ``draw_detections(image, boxes, scores, labels, class_names) -> np.ndarray``: a copy of
  the frame with labelled boxes.
- ``FrameDirWriter`` (``DIR/%06d.jpg``) and ``Mp4Writer`` (mp4v codec): the outputs of
  ``lvod infer --draw`` / ``--video``. Both write atomically: a JPEG is encoded in memory
  and written through ``lvod.io.atomic_write``; the video is written to a temporary
  sibling (OpenCV needs a file name, not a handle) and renamed over the target on a clean
  ``close()``, so a killed run never leaves a truncated ``video.mp4``.

Frame counts come from decoding (``VideoCapture.grab`` until it fails), not from the
container header, whose ``CAP_PROP_FRAME_COUNT`` is an estimate for many files; the
streaming detectors need the true count to pad their window at the end of the video.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lvod.errors import DataError
from lvod.io import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = 25.0


def _cv2():
    """Import OpenCV lazily with an actionable message when it is missing."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("lvod's video input/output needs OpenCV: pip install opencv-python-headless") from exc
    return cv2


def _natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: ``f2.jpg`` < ``f10.jpg``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def read_image(path) -> np.ndarray:
    """Read one image file as RGB ``uint8 (H, W, 3)`` (grey and RGBA files become RGB)."""
    cv2 = _cv2()
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image", "file not found", "check the path / images_root")
    data = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(path, "image", "OpenCV cannot decode this file", "re-save it as JPEG or PNG, or remove it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Frame(NamedTuple):
    """One decoded frame: 0-based ``index``, display ``name`` and RGB ``image (H, W, 3)``."""

    index: int
    name: str
    image: np.ndarray


@dataclass
class VideoSource:
    """A video file, a folder of frames or a single image, read lazily.

    Attributes:
        path: what the user passed.
        kind: ``"video"``, ``"frames"`` or ``"image"``.
        num_frames: frames that ``frames()`` yields (after ``max_frames``).
        total_frames: frames in the whole source (decoded count for a video).
        fps: container frame rate for a video; ``DEFAULT_FPS`` for frames/images.
        files: frame files in order (``frames`` / ``image``); empty for a video.
    """

    path: Path
    kind: str
    num_frames: int
    total_frames: int
    fps: float
    files: list[Path] = field(default_factory=list)

    def frame_name(self, index: int) -> str:
        """File name of frame ``index`` (folder input) or ``"<video>#<index>"``."""
        if self.files:
            return self.files[index].name
        return f"{self.path.name}#{index:06d}"

    def frames(self) -> Iterator[Frame]:
        """Yield the first ``num_frames`` frames in order, one at a time."""
        if self.kind != "video":
            for i in range(self.num_frames):
                yield Frame(i, self.frame_name(i), read_image(self.files[i]))
            return
        cv2 = _cv2()
        cap = cv2.VideoCapture(str(self.path))
        try:
            for i in range(self.num_frames):
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    raise DataError(
                        self.path,
                        f"frame {i}",
                        f"decoding stopped after {i} of {self.num_frames} frames",
                        "the file changed or is damaged; re-encode it with ffmpeg",
                    )
                yield Frame(i, self.frame_name(i), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()


def count_video_frames(path) -> int:
    """Number of frames OpenCV decodes from ``path`` (exact; header counts are estimates)."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DataError(
                path,
                "video",
                "OpenCV cannot open this file (unknown container or codec, or not a video)",
                "re-encode it: ffmpeg -i IN -c:v libx264 OUT.mp4, or extract "
                "its frames into a folder and pass the folder",
            )
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def open_source(path, *, max_frames: int | None = None) -> VideoSource:
    """Open a video file, a folder of frames or one image as a ``VideoSource``.

    Args:
        path: the input.
        max_frames: read only the first ``max_frames`` frames (``None`` = all).

    Raises:
        DataError: missing path, an empty folder, an undecodable video, ``max_frames < 1``.
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise DataError(
            path, "max_frames", f"must be at least 1, got {max_frames}", "pass a positive --max-frames or leave it out"
        )
    if not path.exists():
        raise DataError(path, "input", "does not exist", "pass a video file, a folder of frame images or an image")
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: _natural_key(p.name),
        )
        if not files:
            raise DataError(
                path,
                "folder",
                f"holds no image files (looked for {', '.join(IMAGE_SUFFIXES)})",
                "pass the folder that holds the frames themselves",
            )
        kind, total, fps = "frames", len(files), DEFAULT_FPS
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        files, kind, total, fps = [path], "image", 1, DEFAULT_FPS
    else:
        cv2 = _cv2()
        files, kind = [], "video"
        total = count_video_frames(path)
        if total == 0:
            raise DataError(
                path, "video", "OpenCV decodes no frame from it", "re-encode it: ffmpeg -i IN -c:v libx264 OUT.mp4"
            )
        cap = cv2.VideoCapture(str(path))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        cap.release()
        if not np.isfinite(fps) or fps <= 0:
            fps = DEFAULT_FPS
    num = total if max_frames is None else min(total, int(max_frames))
    return VideoSource(path=path, kind=kind, num_frames=num, total_frames=total, fps=fps, files=files)


def label_color(label: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour for a contiguous label (golden-ratio hues)."""
    import colorsys

    hue = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: np.ndarray, boxes, scores, labels, class_names: list[str], *, thickness: int | None = None
) -> np.ndarray:
    """Return a copy of ``image`` with each box drawn and captioned ``"name 0.87"``.

    Args:
        image: RGB ``uint8 (H, W, 3)``.
        boxes: ``(K, 4)`` x1y1x2y2 in the image's pixels.
        scores: ``(K,)``.
        labels: ``(K,)`` contiguous labels 1..C; ``class_names[label - 1]`` is the caption.
        class_names: C names.
        thickness: line width; default scales with the image (2 px at 1000 px).
    """
    cv2 = _cv2()
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    thick = thickness or max(1, round(max(h, w) / 500))
    font_scale = max(0.4, max(h, w) / 2000)
    for box, score, label in zip(
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(scores).reshape(-1),
        np.asarray(labels).reshape(-1),
    ):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = label_color(int(label))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        name = class_names[int(label) - 1] if 1 <= int(label) <= len(class_names) else str(label)
        text = f"{name} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(h - 1, y1 + th + base + 2)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), color, -1)
        cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


class FrameDirWriter:
    """Write RGB frames as ``folder/%06d.jpg`` (one atomic write per frame)."""

    def __init__(self, folder, *, quality: int = 92):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.quality = int(quality)
        self.count = 0

    def write(self, index: int, image: np.ndarray) -> Path:
        """Encode ``image`` (RGB ``(H, W, 3)``) and write it as frame ``index``."""
        cv2 = _cv2()
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode frame {index} as JPEG")
        path = self.folder / f"{index:06d}.jpg"
        with atomic_write(path, "wb") as fh:
            fh.write(buf.tobytes())
        self.count += 1
        return path


class Mp4Writer:
    """Write RGB frames of one size into an mp4 (``mp4v``) file, renamed into place on close.

    Use as a context manager; on an exception the partial file is deleted and ``path`` is
    left as it was.
    """

    def __init__(self, path, fps: float, size_wh: tuple[int, int]):
        cv2 = _cv2()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size_wh = (int(size_wh[0]), int(size_wh[1]))
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=self.path.suffix or ".mp4", dir=self.path.parent
        )
        os.close(fd)
        self._tmp = Path(tmp)
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), self.size_wh)
        if not self._writer.isOpened():
            self.abort()
            raise RuntimeError(
                f"OpenCV cannot write an mp4v video to {self.path}; use --draw to write JPEG frames instead"
            )
        self.count = 0

    def write(self, image: np.ndarray) -> None:
        """Append one RGB frame; its size must equal the first frame's."""
        cv2 = _cv2()
        h, w = image.shape[:2]
        if (w, h) != self.size_wh:
            raise DataError(
                self.path,
                f"frame {self.count}",
                f"size {w}x{h} differs from the first frame's "
                f"{self.size_wh[0]}x{self.size_wh[1]}; a video has one size",
                "write JPEG frames (--draw) for inputs of mixed sizes",
            )
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.count += 1

    def close(self) -> Path:
        """Finish the file and move it over ``path``."""
        self._writer.release()
        with open(self._tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it owner-only
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file; ``path`` is left as it was."""
        self._writer = getattr(self, "_writer", None)
        if self._writer is not None:
            self._writer.release()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
