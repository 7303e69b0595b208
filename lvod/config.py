"""Typed run configuration: dataclass sections with defaults, TOML/JSON files, overrides.

A config file is TOML (or JSON) with the sections ``[data]``, ``[model]``, ``[train]``,
``[test]``. A top-level ``include = ["../_base_/...toml", ...]`` pulls base files in first
(paths relative to the including file, later files win, tables merge key by key, any
other value is replaced whole), so one base file sets the data root and experiments hold
only what differs. Command-line overrides ``key.sub=value`` are applied last; the value is
read as a TOML value (``train.lr=0.02``, ``data.img_scale=[800, 480]``) and, when it is not
one, as a bare string (``data.root=/data/vid``).

Every key is checked against the dataclasses below: an unknown key or a value of the
wrong type raises :class:`lvod.errors.DataError` naming the key and the file that set it.
The resolved config (every field, defaults included) is what :func:`config_to_dict`
returns; the engine writes it into the run folder and every checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from lvod.errors import DataError

from lvod.models.detector import ModelConfig

CMDLINE = "<command line>"


def choice(default, choices):
    """A string field restricted to ``choices`` (checked when the config is built)."""
    return field(default=default, metadata={"choices": tuple(choices)})


@dataclass
class SourceConfig:
    """One annotation file and the folder its ``file_name`` paths are relative to.

    Relative paths are taken relative to ``data.root``. ``load_as_video = false`` treats
    every image as a one-frame video (ImageNet DET): its refs are copies of the key frame.
    ``key_frames_only`` keeps only frames flagged ``is_vid_train_frame`` as key frames.
    """

    ann_file: str = ""
    images_root: str = ""
    load_as_video: bool = True
    key_frames_only: bool = True


@dataclass
class DataConfig:
    """Datasets, reference-frame sampling and the training transforms."""

    root: str = "data/ILSVRC2015"
    train: list[SourceConfig] = field(default_factory=list)
    val: SourceConfig = field(default_factory=SourceConfig)
    groups_file: str = ""
    ref_sampler: str = choice("bilateral_uniform", ("bilateral_uniform", "uniform", "key_copy"))
    ref_frame_range: list[int] = field(default_factory=lambda: [-9, 9])
    num_ref_frames: int = 2
    img_scale: list[int] = field(default_factory=lambda: [1000, 600])
    flip_prob: float = 0.5
    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    size_divisor: int = 16
    filter_empty_gt: bool = True
    imgs_per_gpu: int = 1
    workers_per_gpu: int = 2


@dataclass
class TrainConfig:
    """Optimiser, schedule, precision, checkpointing and logging of a training run.

    ``lr`` is the learning rate for a total batch of ``lr_base_batch`` images; the engine
    scales it linearly to world_size x imgs_per_gpu. ``lr_steps`` are epochs (0-based
    count of finished epochs) after which the lr is multiplied by ``lr_gamma``.
    ``stop_after_iters`` (> 0) ends the run early at that global iteration, with a
    checkpoint there, without changing the schedule (a later run resumes from it).
    """

    lr: float = 0.01
    lr_base_batch: int = 8
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 7
    lr_steps: list[int] = field(default_factory=lambda: [2, 5])
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    grad_clip: float = 35.0
    amp: bool = True
    seed: int = 0
    deterministic: bool = False
    checkpoint_interval: int = 5000
    max_keep_iter_ckpts: int = 2
    log_interval: int = 50
    init_from: str = ""
    freeze: str = choice("none", ("none", "all_but_classifier"))
    find_unused_parameters: bool = False
    tensorboard: bool = True
    progress_bar: bool = True
    stop_after_iters: int = 0


@dataclass
class TestConfig:
    """Video inference settings owned by the engine.

    Which frames are aggregated at test time is the detector's business and lives in the
    model section (``model.fgfa_window``: FGFA's sliding window; ``model.selsa_test_refs``:
    SELSA's refs spread over the whole video), next to the code that uses it.
    """

    workers: int = 2


@dataclass
class Config:
    """The whole run configuration; ``name`` defaults to the config file's stem."""

    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


# ----------------------------------------------------------------------------- reading


def _read_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(path, "file", f"cannot read the config ({exc.strerror})",
                        "check the path") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, "syntax", str(exc), "fix the TOML/JSON syntax") from exc
    if not isinstance(data, dict):
        raise DataError(path, "top level", "is not a table", "write key = value pairs")
    return data


def _merge(dst: dict, src: dict, prov: dict, file: str, prefix: str = "") -> None:
    """Merge ``src`` into ``dst`` in place; record in ``prov`` which file set each key."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            prov[dotted] = file
            _merge(dst[key], value, prov, file, dotted + ".")
        else:
            dst[key] = value
            prov[dotted] = file
            if isinstance(value, dict):
                _record(value, prov, file, dotted + ".")


def _record(tree: dict, prov: dict, file: str, prefix: str) -> None:
    for key, value in tree.items():
        prov[prefix + key] = file
        if isinstance(value, dict):
            _record(value, prov, file, prefix + key + ".")


def read_tree(path, _chain: tuple = ()) -> tuple[dict, dict]:
    """Read a config file with its includes resolved.

    Returns ``(tree, provenance)``: the merged nested dict and ``{dotted key: file}``.
    """
    path = Path(path).resolve()
    if path in _chain:
        raise DataError(path, "include", "includes itself (cycle: "
                        + " -> ".join(p.name for p in _chain + (path,)) + ")", "break the cycle")
    data = _read_file(path)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise DataError(path, "key 'include'", "must be a path or a list of paths", "fix it")
    tree: dict = {}
    prov: dict = {}
    for inc in includes:
        base_tree, base_prov = read_tree(path.parent / inc, _chain + (path,))
        _merge(tree, base_tree, prov, "")
        prov.update(base_prov)
    _merge(tree, data, prov, str(path))
    return tree, prov


def parse_override(text: str) -> tuple[str, object]:
    """``"train.lr=0.02"`` -> ``("train.lr", 0.02)``; a non-TOML value stays a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise DataError(CMDLINE, f"override {text!r}", "is not key.sub=value",
                        "write e.g. train.lr=0.02")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def apply_override(tree: dict, prov: dict, key: str, value) -> None:
    """Set ``key`` (dotted) in ``tree`` to ``value``, creating tables on the way."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DataError(CMDLINE, f"override {key}", f"{part} is not a table",
                            "override a key inside a table")
    node[parts[-1]] = value
    prov[key] = CMDLINE


# ----------------------------------------------------------------------------- typing


def _where(prov: dict, dotted: str) -> str:
    while dotted:
        if dotted in prov and prov[dotted]:
            return prov[dotted]
        dotted = dotted.rpartition(".")[0]
    return "<defaults>"


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp, value, dotted: str, prov: dict):
    """Check ``value`` against the annotation ``tp``; return it in that type."""
    def bad(problem):
        return DataError(_where(prov, dotted), f"key '{dotted}'", problem,
                         f"give a value of type {_type_name(tp)}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad(f"must be a table, got {type(value).__name__}")
        return build(tp, value, prov, dotted)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, dotted, prov)
            except DataError as exc:
                errors.append(exc.problem)
        raise bad("; ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise bad(f"{value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad(f"must be a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise bad(f"must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{dotted}[{i}]", prov)
                         for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else object
        items = [_coerce(item, v, f"{dotted}[{i}]", prov) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad(f"must be a string, got {value!r}")
        return value
    if tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad(f"must be a list, got {type(value).__name__} {value!r}")
        return tp(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad(f"must be a table, got {value!r}")
        return dict(value)
    if tp is object or tp is typing.Any:
        return value
    raise bad(f"has an unsupported annotation {tp!r} (lvod bug)")


def build(cls, data: dict, prov: dict | None = None, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    prov = prov or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise DataError(_where(prov, dotted), f"key '{dotted}'",
                            f"unknown key; valid keys{' in [' + prefix + ']' if prefix else ''}: "
                            + ", ".join(sorted(fields)), "remove or rename it")
        value = _coerce(hints[key], value, dotted, prov)
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise DataError(_where(prov, dotted), f"key '{dotted}'",
                            f"{value!r} is not one of {list(choices)}", "pick one of those")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(_where(prov, prefix), f"section '{prefix or 'top level'}'", str(exc),
                        "fix the values of that section") from exc


def load_config(path, overrides=()) -> Config:
    """Read a config file (with includes) and ``key=value`` overrides into a :class:`Config`."""
    path = Path(path)
    tree, prov = read_tree(path)
    for text in overrides:
        apply_override(tree, prov, *parse_override(text))
    cfg = build(Config, tree, prov)
    if not cfg.name:
        cfg.name = path.stem.removesuffix(".resolved").removeprefix("config.") or path.stem
    return cfg


def config_to_dict(cfg) -> dict:
    """Plain nested dict (lists, str, numbers, bools) of a config: JSON/TOML-safe."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def config_from_dict(data: dict, source: str = "<checkpoint>") -> Config:
    """Inverse of :func:`config_to_dict` (e.g. the config stored in a checkpoint)."""
    prov: dict = {}
    _record(data, prov, source, "")
    return build(Config, data, prov)


def save_config(cfg: Config, path) -> Path:
    """Write the resolved config as JSON (loadable again with :func:`load_config`)."""
    from lvod.io import save_json

    return save_json(config_to_dict(cfg), path)
