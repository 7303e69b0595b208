"""ImageNet VID (ILSVRC2015) XML annotations + FGFA frame lists -> CocoVID json files.

``convert_imagenet_vid(root, out_dir)`` writes, as mmtracking's converters lay them out:

- ``imagenet_vid_train.json``: every frame of the 3862 videos of ``VID_train_15frames.txt``,
  ``is_vid_train_frame`` on the listed frames. The list's third column is a 0-based frame
  index and is used as it is (mmtracking subtracts 1, which moves every flag one frame
  earlier and loses the 144 rows that say 0);
- ``imagenet_vid_val.json``: every frame of the videos of ``VID_val_videos.txt``, no frame
  flagged (as mmtracking writes val);
- ``imagenet_det_30cls.json``: the DET images of ``DET_train_30classes.txt`` as plain COCO
  images (no video fields), keeping only objects of the 30 VID classes.

Conventions: category ids 1..30 in ``map_vid.txt`` order with ``encode_name`` = WordNet
id; ``bbox = [x1, y1, x2 - x1, y2 - y1]`` from the raw XML integers; ``area = w * h``;
``iscrowd`` False; ``instance_id`` a running id per (video, trackid) over the file;
``occluded``/``generated`` from the XML. Image, video and annotation ids start at 1.

The XML files are read one at a time and the json is streamed to disk (annotations go
through a temporary file), so memory stays small even for the 1.1M train frames. Every
output is written atomically via ``lvod.io``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from tqdm import tqdm

from lvod.errors import DataError
from lvod.io import atomic_write

# (WordNet id, name) in the official map_vid.txt order; category id = position + 1.
VID_CLASSES = (
    ("n02691156", "airplane"),
    ("n02419796", "antelope"),
    ("n02131653", "bear"),
    ("n02834778", "bicycle"),
    ("n01503061", "bird"),
    ("n02924116", "bus"),
    ("n02958343", "car"),
    ("n02402425", "cattle"),
    ("n02084071", "dog"),
    ("n02121808", "domestic_cat"),
    ("n02503517", "elephant"),
    ("n02118333", "fox"),
    ("n02510455", "giant_panda"),
    ("n02342885", "hamster"),
    ("n02374451", "horse"),
    ("n02129165", "lion"),
    ("n01674464", "lizard"),
    ("n02484322", "monkey"),
    ("n03790512", "motorcycle"),
    ("n02324045", "rabbit"),
    ("n02509815", "red_panda"),
    ("n02411705", "sheep"),
    ("n01726692", "snake"),
    ("n02355227", "squirrel"),
    ("n02129604", "tiger"),
    ("n04468005", "train"),
    ("n01662784", "turtle"),
    ("n04530566", "watercraft"),
    ("n02062744", "whale"),
    ("n02391049", "zebra"),
)
WNID_TO_ID = {w: i + 1 for i, (w, _) in enumerate(VID_CLASSES)}
LIST_FILES = {"train": "VID_train_15frames.txt", "val": "VID_val_videos.txt", "det": "DET_train_30classes.txt"}
OUT_FILES = {"train": "imagenet_vid_train.json", "val": "imagenet_vid_val.json", "det": "imagenet_det_30cls.json"}


def vid_categories() -> list[dict]:
    """The 30 categories: ``{id, name, encode_name}``, ids 1..30."""
    return [{"id": i + 1, "name": n, "encode_name": w} for i, (w, n) in enumerate(VID_CLASSES)]


# ----------------------------------------------------------------------------- lists


def _rows(path: Path, ncols: int, fix: str):
    """Yield ``(line number, fields)`` of a space-separated list; blank lines skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "file", "list file not found", fix) from None
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != ncols:
            raise DataError(path, f"line {n}", f"expected {ncols} columns, got {len(fields)}: {line!r}", fix)
        yield n, fields


def _int(path, n, value, what):
    try:
        return int(value)
    except ValueError:
        raise DataError(
            path, f"line {n}", f"{what} {value!r} is not an integer", "use the FGFA ImageSets list files unchanged"
        ) from None


def parse_vid_train_list(path) -> dict[str, dict]:
    """Parse ``VID_train_15frames.txt`` (``<video> 1 <frame, 0-based> <num_frames>``).

    Returns ``{video: {"num_frames": int, "key_frames": [int, ...]}}`` in first-appearance
    order, key frames in list order. Raises DataError on a frame outside the video, a
    repeated (video, frame) row, or a video listed with two frame counts.
    """
    fix = "use the FGFA ImageSets/VID_train_15frames.txt unchanged"
    videos: dict[str, dict] = {}
    for n, (name, _, frame, total) in _rows(path, 4, fix):
        frame, total = _int(path, n, frame, "frame index"), _int(path, n, total, "frame count")
        v = videos.setdefault(name, {"num_frames": total, "key_frames": []})
        if v["num_frames"] != total:
            raise DataError(
                path, f"line {n}", f"{name} listed with {total} frames, earlier with {v['num_frames']}", fix
            )
        if not 0 <= frame < total:
            raise DataError(path, f"line {n}", f"frame {frame} is outside 0..{total - 1} of {name}", fix)
        if frame in v["key_frames"]:
            raise DataError(path, f"line {n}", f"frame {frame} of {name} is listed twice", fix)
        v["key_frames"].append(frame)
    return videos


def parse_vid_val_list(path) -> dict[str, dict]:
    """Parse ``VID_val_videos.txt`` (``<video> <first global frame, 1-based> 0 <num_frames>``).

    Returns ``{video: {"start": int, "num_frames": int}}`` in file order.
    """
    fix = "use the FGFA ImageSets/VID_val_videos.txt unchanged"
    videos: dict[str, dict] = {}
    for n, (name, start, _, total) in _rows(path, 4, fix):
        if name in videos:
            raise DataError(path, f"line {n}", f"video {name} is listed twice", fix)
        total = _int(path, n, total, "frame count")
        if total < 1:
            raise DataError(path, f"line {n}", f"video {name} has {total} frames", fix)
        videos[name] = {"start": _int(path, n, start, "start index"), "num_frames": total}
    return videos


def parse_det_list(path) -> list[str]:
    """Parse ``DET_train_30classes.txt`` (``<DET path without .JPEG> 1``); returns the paths."""
    fix = "use the FGFA ImageSets/DET_train_30classes.txt unchanged"
    return [fields[0] for _, fields in _rows(path, 2, fix)]


# ----------------------------------------------------------------------------- XML


def read_xml(path, *, video: bool) -> tuple[int, int, list[dict]]:
    """Read one ILSVRC annotation XML.

    Returns ``(width, height, objects)``; each object is ``{wnid, trackid (str or None),
    box (x1, y1, x2, y2) ints, occluded, generated (bool)}`` in XML order. ``video=True``
    requires a ``trackid`` per object (VID); DET files have none and no flags (False).
    """
    path = Path(path)
    fix_tree = "re-extract this file from the ILSVRC2015 archive"
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(
            path,
            "file",
            "annotation XML not found",
            "point --root at the ILSVRC2015 folder (it holds Annotations/VID and "
            "Annotations/DET) or pass --lists with lists that match it",
        ) from None
    except ET.ParseError as e:
        raise DataError(path, "xml", f"malformed XML ({e})", fix_tree) from None

    def num(node, tag, where):
        el = node.find(tag)
        if el is None or el.text is None:
            raise DataError(path, where, f"missing <{tag}>", fix_tree)
        try:
            return int(el.text.strip())
        except ValueError:
            raise DataError(path, where, f"<{tag}> is {el.text!r}, not an integer", fix_tree) from None

    size = root.find("size")
    if size is None:
        raise DataError(path, "annotation", "missing <size>", fix_tree)
    width, height = num(size, "width", "size"), num(size, "height", "size")
    objects = []
    for k, obj in enumerate(root.findall("object")):
        where = f"object {k}"
        name = obj.findtext("name")
        box = obj.find("bndbox")
        if not name or box is None:
            raise DataError(path, where, "object without <name> or <bndbox>", fix_tree)
        trackid = obj.findtext("trackid")
        if video and trackid is None:
            raise DataError(path, where, "VID object without <trackid>", fix_tree)
        objects.append(
            {
                "wnid": name.strip(),
                "trackid": None if trackid is None else trackid.strip(),
                "box": tuple(num(box, t, where) for t in ("xmin", "ymin", "xmax", "ymax")),
                "occluded": (obj.findtext("occluded") or "0").strip() == "1",
                "generated": (obj.findtext("generated") or "0").strip() == "1",
            }
        )
    return width, height, objects


# ----------------------------------------------------------------------------- streaming


class _CocoWriter:
    """Streams a COCO/CocoVID json: images go straight into the (atomic) output file,
    annotations into a temporary file that is appended at the end."""

    def __init__(self, path: Path):
        self.path = path
        self._ctx = atomic_write(path, "w", encoding="utf-8")
        self.fh = self._ctx.__enter__()
        self.anns = tempfile.TemporaryFile("w+", encoding="utf-8", dir=path.parent)
        self.num_images = self.num_anns = 0
        self.fh.write('{"categories": ' + json.dumps(vid_categories()) + ', "images": [')

    def image(self, rec: dict) -> int:
        self.num_images += 1
        rec = {"id": self.num_images, **rec}
        self.fh.write(("\n" if self.num_images == 1 else ",\n") + json.dumps(rec))
        return self.num_images

    def ann(self, rec: dict) -> None:
        self.num_anns += 1
        self.anns.write(("\n" if self.num_anns == 1 else ",\n") + json.dumps({"id": self.num_anns, **rec}))

    def close(self, tail: dict) -> None:
        self.fh.write('\n], "annotations": [')
        self.anns.seek(0)
        shutil.copyfileobj(self.anns, self.fh)
        self.anns.close()
        self.fh.write("\n]")
        for key, value in tail.items():
            self.fh.write(f', "{key}": ' + json.dumps(value))
        self.fh.write("}\n")
        self._ctx.__exit__(None, None, None)

    def abort(self, exc) -> None:
        self.anns.close()
        try:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException:  # atomic_write re-raises after removing the temporary file
            pass


def _new_counts() -> dict:
    return {
        "videos": 0,
        "images": 0,
        "key_frames": 0,
        "empty_images": 0,
        "boxes": 0,
        "instances": 0,
        "generated_boxes": 0,
        "occluded_boxes": 0,
        "skipped_objects": 0,
        "boxes_per_class": {n: 0 for _, n in VID_CLASSES},
    }


def _add_box(w: _CocoWriter, counts: dict, image_id: int, cat: int, o: dict, extra: dict) -> None:
    x1, y1, x2, y2 = o["box"]
    bw, bh = x2 - x1, y2 - y1
    w.ann(
        {
            "image_id": image_id,
            **extra,
            "category_id": cat,
            "bbox": [x1, y1, bw, bh],
            "area": bw * bh,
            "iscrowd": False,
            "occluded": o["occluded"],
            "generated": o["generated"],
        }
    )
    counts["boxes"] += 1
    counts["generated_boxes"] += o["generated"]
    counts["occluded_boxes"] += o["occluded"]
    counts["boxes_per_class"][VID_CLASSES[cat - 1][1]] += 1


def _convert_vid(root: Path, videos: dict[str, dict], split: str, out: Path, progress: bool) -> dict:
    counts = _new_counts()
    w = _CocoWriter(out)
    video_recs, next_instance = [], 1
    bar = tqdm(
        total=sum(v["num_frames"] for v in videos.values()),
        desc=f"VID {split}",
        unit="frame",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for vid_id, (name, v) in enumerate(videos.items(), 1):
            keys = set(v.get("key_frames", ()))
            video_recs.append({"id": vid_id, "name": name, "vid_train_frames": sorted(keys)})
            instances: dict[str, int] = {}
            for f in range(v["num_frames"]):
                xml = root / "Annotations" / "VID" / name / f"{f:06d}.xml"
                width, height, objects = read_xml(xml, video=True)
                img_id = w.image(
                    {
                        "file_name": f"{name}/{f:06d}.JPEG",
                        "width": width,
                        "height": height,
                        "video_id": vid_id,
                        "frame_id": f,
                        "is_vid_train_frame": f in keys,
                    }
                )
                counts["key_frames"] += f in keys
                counts["empty_images"] += not objects
                for k, o in enumerate(objects):
                    cat = WNID_TO_ID.get(o["wnid"])
                    if cat is None:
                        raise DataError(
                            xml,
                            f"object {k}",
                            f"{o['wnid']!r} is not one of the 30 VID WordNet ids",
                            "check the file against map_vid.txt; VID annotations only hold the 30 classes",
                        )
                    if o["trackid"] not in instances:
                        instances[o["trackid"]] = next_instance
                        next_instance += 1
                    _add_box(w, counts, img_id, cat, o, {"video_id": vid_id, "instance_id": instances[o["trackid"]]})
                bar.update(1)
        counts["videos"], counts["images"], counts["instances"] = len(video_recs), w.num_images, next_instance - 1
        w.close(
            {
                "videos": video_recs,
                "info": {
                    "description": f"ImageNet VID {split} (ILSVRC2015)",
                    "converter": "lvod.data.imagenet_vid",
                    "counts": counts,
                },
            }
        )
    except BaseException as e:
        w.abort(e)
        raise
    finally:
        bar.close()
    return counts


def _convert_det(root: Path, names: list[str], out: Path, progress: bool) -> dict:
    counts = _new_counts()
    w = _CocoWriter(out)
    try:
        for name in tqdm(names, desc="DET", unit="image", disable=not progress, dynamic_ncols=True):
            xml = root / "Annotations" / "DET" / f"{name}.xml"
            width, height, objects = read_xml(xml, video=False)
            img_id = w.image({"file_name": f"{name}.JPEG", "width": width, "height": height})
            kept = 0
            for o in objects:
                cat = WNID_TO_ID.get(o["wnid"])
                if cat is None:
                    counts["skipped_objects"] += 1
                    continue
                kept += 1
                _add_box(w, counts, img_id, cat, o, {})
            counts["empty_images"] += kept == 0
        counts["images"] = w.num_images
        w.close(
            {
                "info": {
                    "description": "ImageNet DET train images of the 30 VID classes",
                    "converter": "lvod.data.imagenet_vid",
                    "counts": counts,
                }
            }
        )
    except BaseException as e:
        w.abort(e)
        raise
    return counts


def find_lists_dir(root: Path, lists_dir=None) -> Path:
    """``lists_dir`` if given, else ``root/ImageSets`` (FGFA) or ``root/Lists`` (mmtracking)."""
    if lists_dir is not None:
        return Path(lists_dir)
    for cand in (root / "ImageSets", root / "Lists"):
        if cand.is_dir():
            return cand
    raise DataError(
        root,
        "lists",
        "no ImageSets/ or Lists/ folder with the FGFA frame lists",
        "pass --lists DIR holding VID_train_15frames.txt, VID_val_videos.txt, DET_train_30classes.txt",
    )


def convert_imagenet_vid(
    root, out_dir, *, lists_dir=None, splits=("train", "val", "det"), progress: bool = True
) -> dict:
    """Convert the ILSVRC2015 tree under ``root`` for the given ``splits``.

    Returns ``{split: counts, "paths": {split: Path}}``; counts hold ``videos, images,
    key_frames, empty_images, boxes, instances, generated_boxes, occluded_boxes,
    skipped_objects`` (DET objects of other classes) and ``boxes_per_class`` ({name: n}).
    """
    root, out_dir = Path(root), Path(out_dir)
    unknown = [s for s in splits if s not in LIST_FILES]
    if unknown or not splits:
        raise ValueError(f"unknown splits {unknown}; choose from {list(LIST_FILES)}")
    lists = find_lists_dir(root, lists_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"paths": {}}
    for split in splits:
        path = lists / LIST_FILES[split]
        out = out_dir / OUT_FILES[split]
        if split == "train":
            result[split] = _convert_vid(root, parse_vid_train_list(path), split, out, progress)
        elif split == "val":
            result[split] = _convert_vid(root, parse_vid_val_list(path), split, out, progress)
        else:
            result[split] = _convert_det(root, parse_det_list(path), out, progress)
        result["paths"][split] = out
    return result


def format_counts(split: str, c: dict) -> str:
    """Human-readable summary of one split's counts."""
    head = (
        f"{split}: {c['videos']} videos, {c['images']} images ({c['key_frames']} key frames, "
        f"{c['empty_images']} without objects), {c['boxes']} boxes ({c['generated_boxes']} generated, "
        f"{c['occluded_boxes']} occluded), {c['instances']} instances"
    )
    if c["skipped_objects"]:
        head += f", {c['skipped_objects']} objects of other classes skipped"
    per = ", ".join(f"{n} {k}" for n, k in c["boxes_per_class"].items())
    return f"{head}\n  boxes per class: {per}"
