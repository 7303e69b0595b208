"""The training loop: :func:`train` sets a run up, :func:`train_one_epoch` trains one epoch.

SGD + linear warmup + step schedule (:func:`scaled_lr`, :func:`lr_at`), optional AMP
(CUDA only), gradient clipping, DDP when launched by torchrun, a guard against non-finite
losses, a tqdm bar (rank 0), ``log.jsonl`` + TensorBoard (``lvod.engine.runlog``), atomic
checkpoints (``lvod.engine.checkpointing``: ``iter_N.pth`` every
``train.checkpoint_interval`` iterations, ``epoch_N.pth`` at each epoch end, ``latest.pth``
pointing at the newest) and exact resume, mid-epoch included. A resume whose config
differs from the checkpoint's logs the harmless differences and refuses the others.

The model returns a dict: its ``loss_*`` terms are summed and optimised; every other key
is a detached diagnostic (per-group BAGS losses, kept RoIs, ...) that is only logged.
With ``train.ema_decay > 0`` a moving average of the trainable weights
(``lvod.engine.ema``) is updated after every step and kept in every checkpoint; what is
tested and initialised from is then the average.

Decoupled protocols (cRT, BAGS stage 2): ``train.init_from`` starts from a trained run's
weights (:func:`init_from_checkpoint`: weights only, fresh optimiser and schedule at
iteration 0; a classifier of another shape is skipped, any other mismatch refused),
``train.reinit_classifier`` re-initialises ``fc_cls``, ``train.freeze`` trains it alone (the
optimiser gets the trainable parameters only). The run folder (``init_from.json``) and
every checkpoint (``init_from``) record the source: path, sha256, its config name and
fingerprint, its iteration. A resume continues the decoupled run from its own checkpoint
and does not initialise again.

Every checkpoint also carries what the detector was trained to name (:func:`model_identity`:
``classes`` = ``{"cat_ids", "names", "ann_file"}`` and, when ``model.groups_file`` is set,
``groups`` = the frequency-group table as ``lvod.bags_io.groups_to_dict`` writes it), so that
``lvod test`` / ``lvod infer`` need only the checkpoint and the config, from any folder.

The command line (``lvod train``, ``lvod.cli``) uses :func:`default_run_dir`,
:func:`find_resume_checkpoint`, :func:`torchrun_command` and :func:`train`. Several
machines: ``lvod train CONFIG --gpus 4 --nnodes 2 --node-rank R --master-addr HOST`` on
each (:func:`node_launch_args`; ``tools/slurm_train.sh`` does it under SLURM).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lvod.config import Config, config_to_dict, save_config
from lvod.engine import checkpointing as ckpt_io
from lvod.engine.data import build_train_loader
from lvod.engine.ema import WeightEMA
from lvod.engine.runlog import IntervalMeter, RunLog
from lvod.errors import DataError

logger = logging.getLogger(__name__)

LOSS_PREFIX = "loss_"  # loss-dict keys that are optimised; the others are logged only


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the message names the iteration and the loss."""


# ----------------------------------------------------------------------------- schedule


def scaled_lr(lr: float, base_batch: int, total_batch: int) -> float:
    """Linear scaling rule: ``lr`` is for ``base_batch`` images per step."""
    return lr * total_batch / base_batch


def lr_at(it: int, iters_per_epoch: int, base_lr: float, train) -> float:
    """Learning rate of (0-based) iteration ``it``.

    Step schedule by epoch: ``base_lr * gamma ** (number of lr_steps <= epoch)`` where
    ``epoch = it // iters_per_epoch``; during the first ``warmup_iters`` iterations it is
    multiplied by ``1 - (1 - it / warmup_iters) * (1 - warmup_ratio)`` (mmcv linear warmup:
    ``warmup_ratio * lr`` at iteration 0, rising linearly).
    """
    epoch = it // iters_per_epoch
    lr = base_lr * train.lr_gamma ** sum(1 for s in train.lr_steps if epoch >= s)
    if it < train.warmup_iters:
        lr *= 1 - (1 - it / train.warmup_iters) * (1 - train.warmup_ratio)
    return lr


# ----------------------------------------------------------------------------- losses


def split_losses(losses: dict) -> tuple[list[str], list[str]]:
    """``(loss names, diagnostic names)`` of a model's loss dict, each sorted: the keys
    starting with ``loss_`` (optimised) and all the others (logged only)."""
    names = sorted(losses)
    return ([k for k in names if k.startswith(LOSS_PREFIX)], [k for k in names if not k.startswith(LOSS_PREFIX)])


def check_finite(values: torch.Tensor, names: list[str], it: int) -> None:
    """Raise :class:`NonFiniteLossError` when a loss in ``values [K]`` is NaN or inf."""
    bad = ~torch.isfinite(values)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise NonFiniteLossError(
            f"iteration {it}: loss '{names[i]}' is {values[i].item()} "
            f"(all: {dict(zip(names, values.tolist()))}); training stopped. Lower train.lr "
            "or raise train.warmup_iters, check the boxes of the data, or resume from an "
            "earlier checkpoint"
        )


# ----------------------------------------------------------------------------- run folder, launch


def default_run_dir(cfg: Config) -> Path:
    """``work_dirs/<config name>``: where a run goes without ``--work-dir``."""
    return Path("work_dirs") / cfg.name


def find_resume_checkpoint(run_dir, resume) -> Path | None:
    """The checkpoint a run in ``run_dir`` continues from, or None to start fresh.

    ``resume``: True: ``<run>/latest.pth`` (DataError when absent); a path: that path;
    False/None: ``<run>/latest.pth`` when it exists (auto-resume), else None.
    """
    latest = Path(run_dir) / "latest.pth"
    if resume is True:
        if not latest.exists():
            raise DataError(
                latest,
                "resume",
                "there is no checkpoint to resume from",
                "drop --resume to start fresh, or pass the run's --work-dir",
            )
        return latest
    if resume not in (False, None):
        return Path(resume)
    return latest if latest.exists() else None


STATIC_PORT = 29500  # torchrun's default --master_port (static rendezvous)
C10D_PORT = 29400  # torchrun's default port of a c10d rendezvous endpoint


def split_endpoint(text: str) -> tuple[str, int | None]:
    """``"host:port"`` -> ``("host", port)``; ``"host"`` -> ``("host", None)``; an IPv6
    address takes brackets when it has a port (``"[::1]:29500"``)."""
    host, sep, port = str(text).rpartition(":")
    if sep and port.isdigit() and host and (":" not in host or (host.startswith("[") and host.endswith("]"))):
        return host, int(port)
    return str(text), None


def node_launch_args(
    run_dir,
    *,
    nnodes: int = 1,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
) -> list[str]:
    """torchrun's arguments for a run over ``nnodes`` machines (``[]`` for one machine).

    Two ways for the machines to meet, torchrun's own:

    - static rendezvous, every node knows its rank: ``node_rank`` (0 .. nnodes-1) and the
      address of node 0, as ``master_addr`` [+ ``master_port``] or ``rdzv_endpoint``
      ``HOST[:PORT]`` (port 29500 by default) -> ``--nnodes N --node_rank R --master_addr
      HOST --master_port PORT``. What a SLURM job does (``tools/slurm_train.sh``).
    - c10d rendezvous, torchrun numbers the nodes: ``rdzv_endpoint`` ``HOST[:PORT]``
      (port 29400 by default) and no ``node_rank`` -> ``--nnodes N --rdzv_backend c10d
      --rdzv_endpoint HOST:PORT --rdzv_id ID`` (``rdzv_id`` by default
      ``lvod-<run folder name>``, the same on every node).

    Every node runs the same command but for its ``node_rank``. Options that do not go
    together raise ``ValueError`` naming the ``lvod train`` flags.
    """
    if not isinstance(nnodes, int) or nnodes < 1:
        raise ValueError(f"--nnodes {nnodes!r}: give the number of machines, 1 or more")
    given = [
        flag
        for flag, value in (
            ("--node-rank", node_rank),
            ("--master-addr", master_addr),
            ("--master-port", master_port),
            ("--rdzv-endpoint", rdzv_endpoint),
            ("--rdzv-id", rdzv_id),
        )
        if value is not None
    ]
    if nnodes == 1:
        if given:
            raise ValueError(f"{', '.join(given)} go(es) with --nnodes N > 1 (a run over several machines)")
        return []
    if master_addr is None and rdzv_endpoint is None:
        raise ValueError(
            f"--nnodes {nnodes}: say where the machines meet: --node-rank R --master-addr HOST_OF_NODE_0 "
            "(static rendezvous, as tools/slurm_train.sh), or --rdzv-endpoint HOST:PORT (c10d rendezvous)"
        )
    if master_addr is not None and rdzv_endpoint is not None:
        raise ValueError("--master-addr and --rdzv-endpoint both name the meeting point: give one")
    if master_port is not None and master_addr is None:
        raise ValueError("--master-port goes with --master-addr (or give --rdzv-endpoint HOST:PORT)")
    args = ["--nnodes", str(nnodes)]
    if node_rank is not None or master_addr is not None:  # static rendezvous
        if node_rank is None:
            raise ValueError("--master-addr (static rendezvous) needs --node-rank R, this machine's rank 0..N-1")
        if not 0 <= node_rank < nnodes:
            raise ValueError(f"--node-rank {node_rank}: must be in 0..{nnodes - 1} for --nnodes {nnodes}")
        if rdzv_id is not None:
            raise ValueError("--rdzv-id goes with a c10d rendezvous (--rdzv-endpoint without --node-rank)")
        host, port = (master_addr, master_port) if master_addr is not None else split_endpoint(rdzv_endpoint)
        port = STATIC_PORT if port is None else int(port)
        return [*args, "--node_rank", str(node_rank), "--master_addr", host, "--master_port", str(port)]
    host, port = split_endpoint(rdzv_endpoint)
    run_id = rdzv_id if rdzv_id is not None else f"lvod-{Path(run_dir).name}"
    endpoint = f"{host}:{C10D_PORT if port is None else port}"
    return [*args, "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", run_id]


def torchrun_command(config_path, run_dir, gpus: int, resume, overrides, **nodes) -> list[str]:
    """The command that runs ``lvod train`` on ``gpus`` GPUs of this node under
    ``torch.distributed.run``; ``resume``: True (``--resume``), a checkpoint path
    (``--resume-from``) or False/None. ``nodes``: :func:`node_launch_args`'s keywords
    for a run over several machines (none: this machine alone; the command is then
    ``... --nproc_per_node G -m lvod.cli train ...``)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(gpus),
        *node_launch_args(run_dir, **nodes),
        "-m",
        "lvod.cli",
        "train",
        str(config_path),
        *overrides,
        "--work-dir",
        str(run_dir),
    ]
    if resume is True:
        cmd.append("--resume")
    elif resume not in (False, None):
        cmd += ["--resume-from", str(resume)]
    return cmd


# ----------------------------------------------------------------------------- setup


def _join_process_group() -> tuple[int, int, int, bool]:
    """``(rank, world_size, local_rank, joined)`` from torchrun's environment; joins the
    process group when there are several processes and none is joined yet (``joined``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0, False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():  # also for a group the caller joined: NCCL's all_gather_object uses it
        torch.cuda.set_device(local)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), local, joined


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False  # input sizes vary (keep-ratio resize): no re-tuning
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# ----------------------------------------------------------------------------- decoupled protocols
# cRT (Kang et al., ICLR 2020) and BAGS' own protocol: start from a trained detector
# (train.init_from), re-initialise the classifier (train.reinit_classifier), train it alone
# (train.freeze = "all_but_classifier"), cRT with data.sampler = "class_balanced".


def _predictor_prefix(model) -> str | None:
    """State-dict prefix of the model's one box predictor (``"...predictor."``), or None
    when it has none (then no weight counts as the classifier)."""
    from lvod.models.predictor import BoxPredictor

    found = [name for name, m in model.named_modules() if isinstance(m, BoxPredictor)]
    if len(found) > 1:
        raise ValueError(f"expected one box predictor in the model, found {len(found)}: {found}")
    return (found[0] + "." if found[0] else "") if found else None


def is_classifier_key(name: str, prefix: str | None) -> bool:
    """Whether state-dict key ``name`` belongs to the classifier: the predictor's weights and
    state (``fc_cls``, a head's buffers such as Seesaw's ``cum_samples``), not ``fc_reg``."""
    return prefix is not None and name.startswith(prefix) and not name.startswith(prefix + "fc_reg.")


def plan_init_weights(own: dict, weights: dict, prefix: str | None) -> dict:
    """Which of ``weights`` (a checkpoint's state dict) load into a model whose state dict
    is ``own``; pure, nothing is copied.

    Returns ``{"load": {name: tensor}, "shape_mismatch": [...], "missing": [...],
    "unexpected": [...], "refused": {name: reason}}``: ``load`` every tensor whose name and
    shape match; the three lists name the classifier keys (:func:`is_classifier_key`) that
    differ in shape, are only in the model, or only in the file (they keep the model's
    fresh values); ``refused`` every other key that does not match (a different detector).
    """

    def shape(t) -> list[int]:
        return list(t.shape)

    out = {"load": {}, "shape_mismatch": [], "missing": [], "unexpected": [], "refused": {}}
    for name, value in weights.items():
        clf = is_classifier_key(name, prefix)
        if name not in own:
            if clf:
                out["unexpected"].append(name)
            else:
                out["refused"][name] = "in the file, not in this model"
        elif not torch.is_tensor(value):
            out["refused"][name] = f"is a {type(value).__name__} in the file, not a tensor"
        elif value.shape == own[name].shape:
            out["load"][name] = value
        elif clf:
            out["shape_mismatch"].append(name)
        else:
            out["refused"][name] = f"shape {shape(value)} in the file, {shape(own[name])} in this model"
    for name in own:
        if name not in weights:
            if is_classifier_key(name, prefix):
                out["missing"].append(name)
            else:
                out["refused"][name] = "in this model, not in the file"
    return out


def _sha256(path, chunk: int = 1 << 24) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_fingerprint(config: dict | None) -> str | None:
    """A short hash of a resolved config dict (as checkpoints store it)."""
    import hashlib
    import json

    if not isinstance(config, dict):
        return None
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def reset_classifier(model, seed: int) -> list[str]:
    """Re-initialise the box predictor's classifier with the head's own
    ``reset_classifier()`` (``fc_cls`` as a new head starts it; ``fc_reg`` stays), drawing
    from torch's generator seeded with ``seed`` inside a forked RNG state: the same weights
    on every rank, whatever was drawn before, and the global RNG left as it was. Returns
    the names re-initialised."""
    prefix = _predictor_prefix(model)
    if prefix is None:
        raise ValueError("the model has no box predictor: there is no classifier to re-initialise")
    pred = model.get_submodule(prefix[:-1]) if prefix else model
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(int(seed))
        pred.reset_classifier()
    return [f"{prefix}fc_cls.weight", f"{prefix}fc_cls.bias"]


def init_from_checkpoint(model, path, *, reinit_classifier: bool = False, seed: int = 0) -> dict:
    """Load a trained run's weights into ``model`` for a decoupled run (weights only:
    ``torch.load(weights_only=True)``, no optimiser, schedule or RNG state).

    Every weight whose name and shape match is loaded. The classifier may differ (a
    softmax run initialising a BAGS stage 2: another ``fc_cls`` shape): it is skipped and
    keeps its fresh initialisation, with a log line. Any other difference (another
    detector kind, depth, width or number of classes, or a file that is not an lvod
    checkpoint) raises ``DataError`` naming the file and the keys. ``reinit_classifier``
    loads none of the classifier's weights and state and re-initialises ``fc_cls``
    (:func:`reset_classifier` with ``seed``).

    Returns the provenance record that the run folder and its checkpoints keep:
    ``{"path", "resolved", "sha256", "name", "config_fingerprint", "source_iter", "head",
    "loaded", "shape_mismatch", "missing", "unexpected", "classifier"}`` (``classifier``:
    ``"loaded"``, ``"fresh"`` (not loadable, freshly built) or ``"re-initialised"``;
    ``weights``: ``"ema"`` when the source kept a moving average of its weights, which is
    then what is loaded, as ``lvod test`` tests it, else ``"model"``).
    """
    path = Path(path)
    ckpt = ckpt_io.load_checkpoint(path)
    weights = ckpt_io.state_dict_of(ckpt)
    prefix = _predictor_prefix(model)
    plan = plan_init_weights(model.state_dict(), weights, prefix)
    if plan["refused"]:
        shown = "; ".join(f"{k}: {why}" for k, why in list(plan["refused"].items())[:8])
        more = len(plan["refused"]) - 8
        raise DataError(
            path,
            "model weights",
            f"{len(plan['refused'])} weights outside the classifier do not match this config's model "
            f"({shown}{f'; and {more} more' if more > 0 else ''})",
            "initialise from a run of the same detector (model.kind, depth, widths, number of classes): "
            "only the classifier (fc_cls) may differ; an mmtracking checkpoint goes through lvod's importer",
        )
    if reinit_classifier:  # the whole classifier starts fresh: its weights and its state (Seesaw's counts, ...)
        plan["load"] = {k: v for k, v in plan["load"].items() if not is_classifier_key(k, prefix)}
    model.load_state_dict(plan["load"], strict=False)
    skipped = plan["shape_mismatch"] + plan["missing"] + plan["unexpected"]
    if skipped:
        logger.info(
            "init_from %s: classifier weights not loaded (the head differs: %s); they keep their fresh initialisation",
            path,
            ", ".join(
                f"{k} shape {list(weights[k].shape)} -> {list(model.state_dict()[k].shape)}"
                for k in plan["shape_mismatch"]
            )
            or ", ".join(plan["missing"] + plan["unexpected"]),
        )
    classifier = "fresh" if plan["shape_mismatch"] or plan["missing"] else "loaded"
    if reinit_classifier:
        names = reset_classifier(model, seed)
        classifier = "re-initialised"
        logger.info("init_from %s: classifier %s re-initialised", path, ", ".join(names))
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    model_cfg = (config or {}).get("model") or {}
    return {
        "path": str(path),
        "resolved": str(path.resolve()),
        "sha256": _sha256(path),
        "name": (config or {}).get("name"),
        "config_fingerprint": config_fingerprint(config),
        "source_iter": ckpt.get("iter") if isinstance(ckpt.get("iter"), int) else None,
        "head": model_cfg.get("head") if isinstance(model_cfg, dict) else None,
        "loaded": len(plan["load"]),
        "shape_mismatch": plan["shape_mismatch"],
        "missing": plan["missing"],
        "unexpected": plan["unexpected"],
        "classifier": classifier,
        "weights": "ema" if ckpt_io.has_ema(ckpt) else "model",  # a run's moving average when it kept one
    }


def init_and_freeze(model, cfg: Config, log, state: dict | None, write_dir=None) -> dict | None:
    """``train.init_from`` (+ ``train.reinit_classifier``) on a fresh start, and
    ``train.freeze`` always (``requires_grad`` is not saved, so a resume freezes again).

    On a fresh start with ``init_from`` it logs an ``init_from`` record, writes
    ``<write_dir>/init_from.json`` (rank 0 passes the run folder) and returns the
    provenance record (:func:`init_from_checkpoint`); on a resume it returns the resumed
    checkpoint's record (None when it has none): the weights come from there.
    """
    tc = cfg.train
    record = None
    if state is not None:
        record = state.get("init_from")
        if tc.init_from:
            logger.info("resuming: train.init_from (%s) is not applied again", tc.init_from)
    elif tc.init_from:
        record = init_from_checkpoint(model, tc.init_from, reinit_classifier=tc.reinit_classifier, seed=tc.seed)
        log({"event": "init_from", "iter": 0, **record})
        if write_dir is not None:
            from lvod.io import save_json

            save_json(record, Path(write_dir) / "init_from.json")
    if tc.freeze == "all_but_classifier":
        from lvod.models.checkpoint import freeze_all_but_classifier

        trainable = freeze_all_but_classifier(model)
        it = 0 if state is None else state["iter"]
        log({"event": "freeze", "iter": it, "mode": tc.freeze, "trainable": trainable})
    elif tc.freeze != "none":  # lvod.config validates the choice
        raise AssertionError(f"lvod bug: train.freeze={cfg.train.freeze!r} has no implementation")
    return record


def check_decoupled_config(cfg: Config, resuming: bool) -> None:
    """Refuse decoupled settings that would do nothing, and a missing ``init_from`` file
    before the run folder is written."""
    if cfg.train.reinit_classifier and not cfg.train.init_from:
        raise DataError(
            "<config>",
            "train.reinit_classifier",
            "is true but train.init_from is empty: the classifier of a fresh model is already freshly initialised",
            "set train.init_from (lvod train CONFIG --init-from RUN/latest.pth), or drop reinit_classifier",
        )
    if cfg.train.init_from and not resuming and not Path(cfg.train.init_from).is_file():
        raise DataError(
            cfg.train.init_from,
            "train.init_from",
            "does not exist",
            "pass a trained run's checkpoint, e.g. --init-from work_dirs/<run>/latest.pth",
        )
    if cfg.train.freeze != "none" and not cfg.train.init_from:
        logger.warning(
            "train.freeze = %r without train.init_from: only the classifier of an untrained detector will learn",
            cfg.train.freeze,
        )


def _check_sampler_resume(state: dict, path, world: int, imgs_per_gpu: int, iters_per_epoch: int) -> int:
    """The global iteration a resume from ``state`` starts at. A different world size or
    batch size is allowed at an epoch boundary only (restarting that epoch)."""
    s = state["sampler"]
    if (s["world_size"], s["batch_size"]) == (world, imgs_per_gpu):
        return state["iter"]
    if s["batch"]:
        raise DataError(
            path,
            "sampler",
            f"was saved mid-epoch with world_size {s['world_size']} x "
            f"{s['batch_size']} images; this run has {world} x {imgs_per_gpu}",
            "resume with the same GPUs and data.imgs_per_gpu, or pass "
            "--resume-from <run>/epoch_N.pth (an epoch boundary)",
        )
    return s["epoch"] * iters_per_epoch  # same epoch, new batch size


def model_identity(data, table=None) -> dict:
    """What a checkpoint carries so that test and inference need no data file and no
    group-table file: ``{"classes": {"cat_ids": [...], "names": [...], "ann_file": str},
    "groups": groups_to_dict(table)}`` (``groups`` only with a table). ``data``: the
    training ``CocoVid`` (its ``cat_ids`` order is the detector's label order); plain
    Python values only, so ``torch.load(weights_only=True)`` reads them."""
    out = {
        "classes": {
            "cat_ids": [int(c) for c in data.cat_ids],
            "names": [str(n) for n in data.cat_names],
            "ann_file": str(data.path),
        }
    }
    if table is not None:
        from lvod.bags_io import groups_to_dict

        out["groups"] = groups_to_dict(table)
    return out


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _no_log(record: dict) -> None:
    """The log of ranks other than 0."""


@dataclass
class TrainingRun:
    """What :func:`train` builds once and :func:`train_one_epoch` uses every iteration."""

    cfg: Config
    model: torch.nn.Module  # the detector (checkpoints save its weights)
    net: torch.nn.Module  # the model, or its DDP wrapper (forward goes through it)
    params: list  # the trainable parameters (clipped)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None  # the autocast dtype (float16 on CUDA, bfloat16 on a CPU), None: fp32
    device: torch.device
    rank: int
    world: int
    sampler: object  # lvod.engine.data.ResumableSampler
    loader: object  # its DataLoader
    iters_per_epoch: int
    base_lr: float
    stop_at: int  # the last global iteration of this call
    log: object  # RunLog on rank 0, _no_log elsewhere
    meter: IntervalMeter
    checkpoints: ckpt_io.CheckpointWriter
    bar: object = None  # tqdm on rank 0 with train.progress_bar
    init_record: dict | None = None  # where a decoupled run's weights came from (train.init_from)
    identity: dict | None = None  # the classes (+ group table) every checkpoint carries (model_identity)
    ema: WeightEMA | None = None  # the weights' moving average (train.ema_decay > 0)


def _checkpoint(run: TrainingRun, name: str, it: int, epoch: int, batch: int) -> None:
    """Save ``name`` after global iteration ``it``: ``epoch`` finished epochs plus
    ``batch`` batches of the next (the sampler's resume point)."""
    cfg = run.cfg
    run.checkpoints.save(
        name,
        {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": {"base_lr": run.base_lr, "iter": it},
            "scaler": run.scaler.state_dict(),
            "sampler": {
                "epoch": epoch,
                "batch": batch,
                "seed": cfg.train.seed,
                "world_size": run.world,
                "batch_size": cfg.data.imgs_per_gpu,
            },
            "epoch": epoch,
            "iter": it,
            "config": config_to_dict(cfg),
            **({"init_from": run.init_record} if run.init_record else {}),
            **({"ema": run.ema.state_dict()} if run.ema is not None else {}),
            **(run.identity or {}),
        },
    )


# ----------------------------------------------------------------------------- the loop


def train_one_epoch(run: TrainingRun, epoch: int, it: int) -> dict:
    """Train 0-based ``epoch`` from global iteration ``it`` (mid-epoch on a resume) until
    the epoch ends or ``run.stop_at`` is reached; logs and checkpoints on the way.

    Returns ``{"iter": global iterations done, "finished": whether the epoch ran to its
    end}``.
    """
    tc, ipe = run.cfg.train, run.iters_per_epoch
    run.sampler.set_epoch(epoch, it - epoch * ipe)
    run.net.train()
    for batch in run.loader:
        data_done = time.perf_counter()
        lr = lr_at(it, ipe, run.base_lr, tc)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        images = batch["images"].to(run.device, non_blocking=True)  # [B, T, 3, H, W]
        targets = [{k: v.to(run.device) for k, v in t.items()} for t in batch["targets"]]
        with torch.autocast(run.device.type, dtype=run.amp or torch.float16, enabled=run.amp is not None):
            losses = run.net(images, batch["image_sizes"], targets)

        # the loss_* terms are optimised; the other keys are diagnostics, logged only
        loss_names, diag_names = split_losses(losses)
        values = torch.stack(
            [torch.as_tensor(losses[k], device=run.device).detach().float() for k in loss_names + diag_names]
        )  # [K + D], all ranks' mean
        if run.world > 1:
            dist.all_reduce(values)
            values /= run.world
        check_finite(values[: len(loss_names)], loss_names, it + 1)
        loss = sum(losses[k].float() for k in loss_names)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        grad_norm = float("nan")
        if tc.grad_clip > 0:
            run.scaler.unscale_(run.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, tc.grad_clip))
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update(run.model)
        it += 1

        logged = dict(zip(loss_names, values[: len(loss_names)].tolist()))
        logged["loss"] = values[: len(loss_names)].sum().item()
        logged.update(zip(diag_names, values[len(loss_names) :].tolist()))
        run.meter.tick(logged, data_done)
        if run.rank == 0 and (it % tc.log_interval == 0 or it == run.stop_at):
            record = run.meter.record(
                it=it,
                epoch=epoch + 1,
                lr=lr,
                grad_norm=grad_norm,
                memory_mb=_memory_mb(run.device),
                iters_left=run.stop_at - it,
            )
            run.log(record)
            if run.bar is not None:
                run.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
        if run.bar is not None:
            run.bar.update(1)

        if it % ipe == 0:
            _checkpoint(run, f"epoch_{epoch + 1}.pth", it, epoch + 1, 0)
        elif (tc.checkpoint_interval and it % tc.checkpoint_interval == 0) or it == run.stop_at:
            _checkpoint(run, f"iter_{it}.pth", it, epoch, it - epoch * ipe)
        if it >= run.stop_at:
            return {"iter": it, "finished": it % ipe == 0}
        run.meter.restart_clock()
    return {"iter": it, "finished": True}


def autocast_dtype(tc, device: torch.device) -> torch.dtype | None:
    """The training autocast dtype: float16 on CUDA with ``train.amp`` (mmcv's fp16, with
    a grad scaler), bfloat16 on a CPU with ``train.cpu_amp`` (no scaler: bfloat16 has
    float32's range), None for float32."""
    if device.type == "cuda":
        return torch.float16 if tc.amp else None
    return torch.bfloat16 if tc.cpu_amp else None


def _build_optimizer(model, tc, base_lr: float, device: torch.device) -> tuple:
    """``(params, optimizer, scaler, amp)``: SGD over the trainable parameters, the grad
    scaler (enabled for float16 only; a no-op otherwise) and :func:`autocast_dtype`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    amp = autocast_dtype(tc, device)
    return params, optimizer, torch.amp.GradScaler("cuda", enabled=amp == torch.float16), amp


def _restore(state: dict, model, optimizer, scaler, rank: int, world: int) -> None:
    """Load a checkpoint's weights, optimiser and scaler state and this rank's RNG state
    (rank 0's when the world size changed)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"]:  # {}: saved without AMP (e.g. on a CPU); an enabled scaler then starts fresh
        scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    ckpt_io.set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])


def _build_ema(model, decay: float, state: dict | None, resume) -> WeightEMA | None:
    """The weights' moving average when ``train.ema_decay > 0``: continued from the resumed
    checkpoint's ``ema`` entry, else started from the model's current weights."""
    if decay <= 0:
        return None
    ema = WeightEMA(model, decay)
    if state and isinstance(state.get("ema"), dict):
        try:
            ema.load_state_dict(state["ema"])
        except KeyError as exc:
            raise DataError(resume, "ema", str(exc), "resume with the config the run was trained with") from exc
    elif state:
        logger.warning("%s has no weight average: train.ema_decay starts it from the resumed weights", resume)
    return ema


def train(cfg: Config, run_dir, *, model=None, sources=None, resume=None) -> dict:
    """Train ``cfg``'s detector into ``run_dir``.

    ``model``/``sources`` replace the detector and the training files (tests, notebooks).
    ``resume``: a checkpoint path (:func:`find_resume_checkpoint`), or None to start
    fresh; its config is checked against ``cfg`` before anything is written. Under
    torchrun each process calls this; it joins the process group and, when it joined it,
    leaves it at the end. Returns ``{"iter": global iterations done, "epoch": finished
    epochs, "run_dir": str}``.
    """
    run_dir, tc = Path(run_dir), cfg.train
    state = ckpt_io.load_checkpoint(resume) if resume else None
    changed = ckpt_io.check_resume_config(state, cfg, resume) if state else {}
    check_decoupled_config(cfg, resuming=state is not None)
    rank, world, local_rank, joined = _join_process_group()
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    log, bar = _no_log, None
    try:
        _seed_everything(tc.seed + rank, tc.deterministic)
        dataset, sampler, loader = build_train_loader(
            cfg.data, rank, world, tc.seed, sources, mean=cfg.model.image_mean, std=cfg.model.image_std
        )
        ipe = sampler.batches_per_epoch
        total_iters = tc.epochs * ipe
        base_lr = scaled_lr(tc.lr, tc.lr_base_batch, world * cfg.data.imgs_per_gpu)
        start_iter = _check_sampler_resume(state, resume, world, cfg.data.imgs_per_gpu, ipe) if state else 0

        if rank == 0:
            log = RunLog(run_dir, start_iter, tc.tensorboard)
            save_config(cfg, run_dir / "config.resolved.json")
        if changed:
            diff = {k: list(v) for k, v in changed.items()}
            log({"event": "resume_config_diff", "iter": start_iter, "checkpoint": str(resume), "changed": diff})
        table = None
        if cfg.model.groups_file or model is None:
            from lvod.models import read_group_table

            table = read_group_table(cfg.model, dataset.cat_ids)  # read once: the model and the checkpoints
        if model is None:
            from lvod.models import build_model

            model = build_model(cfg.model, dataset.cat_ids, groups=table)
        init_record = init_and_freeze(model, cfg, log, state, run_dir if rank == 0 else None)
        model.to(device)
        params, optimizer, scaler, amp = _build_optimizer(model, tc, base_lr, device)
        if state:
            _restore(state, model, optimizer, scaler, rank, world)
        ema = _build_ema(model, tc.ema_decay, state, resume)
        net = model
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[local_rank] if device.type == "cuda" else None,
                find_unused_parameters=tc.find_unused_parameters,
            )
        log(
            {
                "event": "start",
                "iter": start_iter,
                "world_size": world,
                "device": str(device),
                "total_batch": world * cfg.data.imgs_per_gpu,
                "base_lr": base_lr,
                "amp": str(amp).removeprefix("torch.") if amp else False,
                "iters_per_epoch": ipe,
                "total_iters": total_iters,
                "key_frames": len(dataset),
                "skipped_empty_key_frames": dataset.num_skipped_empty,
                **sampler.describe(),
                "trainable_params": sum(p.numel() for p in params),
                "ema_decay": tc.ema_decay,
                "resumed_from": str(resume) if resume else None,
                "run_dir": str(run_dir),
            }
        )
        logger.info("training %s in %s from iteration %d of %d", cfg.name, run_dir, start_iter, total_iters)
        if rank == 0 and tc.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=total_iters, initial=start_iter, dynamic_ncols=True, desc=cfg.name)

        run = TrainingRun(
            cfg=cfg,
            model=model,
            net=net,
            params=params,
            optimizer=optimizer,
            scaler=scaler,
            amp=amp,
            device=device,
            rank=rank,
            world=world,
            sampler=sampler,
            loader=loader,
            iters_per_epoch=ipe,
            base_lr=base_lr,
            stop_at=min(total_iters, tc.stop_after_iters or total_iters),
            log=log,
            meter=IntervalMeter(),
            bar=bar,
            checkpoints=ckpt_io.CheckpointWriter(run_dir, rank=rank, world=world, keep_epochs=tc.keep_checkpoints),
            init_record=init_record,
            identity=model_identity(dataset.sources[0], table),
            ema=ema,
        )
        it = start_iter
        for epoch in range(start_iter // ipe, tc.epochs):
            if it >= run.stop_at:
                break
            it = train_one_epoch(run, epoch, it)["iter"]
        if world > 1:
            # Leave together: the other ranks return from the last checkpoint's gather while
            # rank 0 is still writing the file, and a gloo peer that tears down then can
            # abort (SIGABRT at exit, seen once in about nine two-rank demo runs on a 2-core
            # CPU) after a finished run.
            dist.barrier()
    finally:
        if bar is not None:
            bar.close()
        if isinstance(log, RunLog):
            log.close()
        net = run = None  # the DDP wrapper holds the process group: release it before the group goes
        if joined and dist.is_initialized():
            dist.destroy_process_group()
    return {"iter": it, "epoch": it // ipe, "run_dir": str(run_dir)}
