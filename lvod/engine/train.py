"""The training loop (reads top to bottom) and its entry point ``train_main``.

``train(cfg, run_dir)`` trains a detector: SGD + linear warmup + step schedule, optional
AMP (CUDA only), gradient clipping, DDP when launched by torchrun, a guard against
non-finite losses, a tqdm bar, ``log.jsonl`` (+ TensorBoard when importable), atomic
checkpoints (``iter_N.pth`` every ``train.checkpoint_interval`` iterations,
``epoch_N.pth`` at each epoch end, ``latest.pth`` pointing at the newest) and exact
resume, mid-epoch included.

Run as a module (what ``lvod train`` and torchrun call)::

    python -m lvod.engine.train CONFIG [--work-dir DIR] [--gpus N] [--resume | --resume-from CKPT]
                                [key=value ...]
    torchrun --nnodes 2 --nproc_per_node 8 ... -m lvod.engine.train CONFIG --work-dir DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lvod.config import Config, config_to_dict, load_config, save_config
from lvod.engine import checkpointing as ckpt_io
from lvod.engine.data import build_train_loader
from lvod.errors import DataError
from lvod.io import atomic_write

FREEZE_CHOICES = ("none", "all_but_classifier")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the message names the iteration and the loss."""


# ----------------------------------------------------------------------------- maths


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


def check_finite(values: torch.Tensor, names: list[str], it: int) -> None:
    """Raise :class:`NonFiniteLossError` when a loss in ``values [K]`` is NaN or inf."""
    bad = ~torch.isfinite(values)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise NonFiniteLossError(
            f"iteration {it}: loss '{names[i]}' is {values[i].item()} "
            f"(all: {dict(zip(names, values.tolist()))}); training stopped. Lower train.lr "
            "or raise train.warmup_iters, check the boxes of the data, or resume from an "
            "earlier checkpoint")


# ----------------------------------------------------------------------------- setup


def _distributed() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; joins the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), local


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False  # input sizes vary (keep-ratio resize): no re-tuning
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def build_model(cfg: Config, cat_ids=None) -> torch.nn.Module:
    """The detector of ``cfg.model``, checked against the data (training and test use this).

    ``model.num_classes`` must equal the number of categories of the data files (when
    ``cat_ids`` is given: ``lvod infer`` on a user's video has no annotation file) and
    ``model.image_mean/std`` the pipeline's ``data.mean/std``. A ``bags`` head gets its
    group table from ``model.head_kwargs.groups`` (a path) or else ``data.groups_file``,
    read with ``lvod.groups.load_groups`` and checked against the data's ``cat_ids``.
    """
    from lvod.models.detector import build_detector

    m = cfg.model
    if cat_ids is not None and m.num_classes != len(cat_ids):
        raise DataError("<config>", "model.num_classes", f"is {m.num_classes} but the training "
                        f"data has {len(cat_ids)} categories", f"set model.num_classes={len(cat_ids)}")
    if not (np.allclose(m.image_mean, cfg.data.mean) and np.allclose(m.image_std, cfg.data.std)):
        raise DataError("<config>", "model.image_mean/image_std", "differ from data.mean/std",
                        "use one normalisation for training and inference")
    kwargs = dict(m.head_kwargs)
    if m.head == "bags" and not hasattr(kwargs.get("groups"), "pred_slice"):
        from lvod.groups import load_groups

        path = kwargs.get("groups") or cfg.data.groups_file
        if not path:
            raise DataError("<config>", "data.groups_file", "is empty but model.head = 'bags'",
                            "run `lvod groups` and set data.groups_file to its groups.json")
        kwargs["groups"] = load_groups(path)
        if cat_ids is not None:
            kwargs.setdefault("cat_ids", [int(c) for c in cat_ids])
    return build_detector(dataclasses.replace(m, head_kwargs=kwargs))


def init_and_freeze(model, cfg: Config, log, resuming: bool) -> None:
    """``train.init_from`` (skipped on resume) and ``train.freeze`` (the decoupled protocol)."""
    if cfg.train.init_from and not resuming:
        weights = ckpt_io.state_dict_of(ckpt_io.load_checkpoint(cfg.train.init_from))
        report = ckpt_io.load_matching_weights(model, weights)
        log({"event": "init_from", "path": cfg.train.init_from,
             **{k: (len(v) if k == "loaded" else v) for k, v in report.items()}})
    if cfg.train.freeze == "all_but_classifier":
        from lvod.models.checkpoint import freeze_all_but_classifier

        freeze_all_but_classifier(model)
    elif cfg.train.freeze != "none":
        raise ValueError(f"train.freeze={cfg.train.freeze!r}; valid: {FREEZE_CHOICES}")


class RunLog:
    """``log.jsonl`` (one JSON object per line) and an optional TensorBoard writer.

    Built on rank 0 only. With ``tensorboard`` on but the package missing it prints one
    warning line to stderr and logs to ``log.jsonl`` only.
    """

    def __init__(self, run_dir: Path, keep_until_iter: int | None, tensorboard: bool):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "log.jsonl"
        if keep_until_iter is not None and self.path.exists():  # drop lines past the resume point
            lines = [ln for ln in self.path.read_text().splitlines()
                     if ln.strip() and json.loads(ln).get("iter", 0) <= keep_until_iter]
            with atomic_write(self.path) as fh:
                fh.write("".join(ln + "\n" for ln in lines))
        self.fh = open(self.path, "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("warning: train.tensorboard is on but the tensorboard package is not installed: "
                      "pip install 'lvod[tensorboard]'; logging to log.jsonl only", file=sys.stderr, flush=True)

    def __call__(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.tb is not None and "iter" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"train/{k}", v, record["iter"])

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- the loop


def train(cfg: Config, run_dir, *, model=None, sources=None, resume=None) -> dict:
    """Train ``cfg``'s detector into ``run_dir``; returns ``{"iter", "epoch", "run_dir"}``.

    ``model``/``sources`` replace the detector and the training files (tests, notebooks).
    ``resume``: a checkpoint path, or None to start fresh.
    """
    run_dir = Path(run_dir)
    rank, world, local_rank = _distributed()
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    tc = cfg.train
    _seed_everything(tc.seed + rank, tc.deterministic)
    dataset, sampler, loader = build_train_loader(cfg.data, rank, world, tc.seed, sources)
    iters_per_epoch = sampler.batches_per_epoch
    total_iters = tc.epochs * iters_per_epoch
    base_lr = scaled_lr(tc.lr, tc.lr_base_batch, world * cfg.data.imgs_per_gpu)
    state = ckpt_io.load_checkpoint(resume) if resume else None
    start_iter = state["iter"] if state else 0
    if state and (state["sampler"]["world_size"], state["sampler"]["batch_size"]) != (
            world, cfg.data.imgs_per_gpu):
        if state["sampler"]["batch"]:
            raise DataError(resume, "sampler", f"was saved mid-epoch with world_size "
                            f"{state['sampler']['world_size']} x {state['sampler']['batch_size']} "
                            f"images; this run has {world} x {cfg.data.imgs_per_gpu}",
                            "resume with the same GPUs and data.imgs_per_gpu, or pass "
                            "--resume-from <run>/epoch_N.pth (an epoch boundary)")
        start_iter = state["sampler"]["epoch"] * iters_per_epoch  # same epoch, new batch size
    log = RunLog(run_dir, start_iter, tc.tensorboard) if rank == 0 else (lambda record: None)
    if rank == 0:
        save_config(cfg, run_dir / "config.resolved.json")

    model = model if model is not None else build_model(cfg, dataset.cat_ids)
    init_and_freeze(model, cfg, log, resuming=state is not None)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=tc.momentum,
                                weight_decay=tc.weight_decay)
    amp = tc.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        ckpt_io.set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None,
            find_unused_parameters=tc.find_unused_parameters)
    log({"event": "start", "iter": start_iter, "world_size": world, "device": str(device),
         "total_batch": world * cfg.data.imgs_per_gpu, "base_lr": base_lr, "amp": amp,
         "iters_per_epoch": iters_per_epoch, "total_iters": total_iters,
         "key_frames": len(dataset), "skipped_empty_key_frames": dataset.num_skipped_empty,
         "resumed_from": str(resume) if resume else None, "run_dir": str(run_dir)})

    def checkpoint(name: str, it: int, epoch: int, batch: int) -> None:
        rngs = [ckpt_io.rng_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, ckpt_io.rng_state())
        if rank != 0:
            return
        path = ckpt_io.save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": {"base_lr": base_lr, "iter": it}, "scaler": scaler.state_dict(),
            "rng": rngs, "sampler": {"epoch": epoch, "batch": batch, "seed": tc.seed,
                                     "world_size": world, "batch_size": cfg.data.imgs_per_gpu},
            "epoch": epoch, "iter": it, "config": config_to_dict(cfg)}, run_dir / name)
        ckpt_io.update_latest(path, run_dir / "latest.pth")
        if name.startswith("iter_"):
            ckpt_io.prune_iter_checkpoints(run_dir, tc.max_keep_iter_ckpts)

    bar = None
    if rank == 0 and tc.progress_bar:
        from tqdm import tqdm
        bar = tqdm(total=total_iters, initial=start_iter, dynamic_ncols=True, desc=cfg.name)
    stop_at = min(total_iters, tc.stop_after_iters or total_iters)
    it = start_iter
    sums: dict[str, float] = {}
    t_iter = t_data = 0.0
    n_logged = 0
    tick = time.perf_counter()
    try:
        for epoch in range(start_iter // iters_per_epoch, tc.epochs):
            if it >= stop_at:
                break
            sampler.set_epoch(epoch, it - epoch * iters_per_epoch)
            net.train()
            for batch in loader:
                data_done = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = lr = lr_at(it, iters_per_epoch, base_lr, tc)
                images = batch["images"].to(device, non_blocking=True)  # [B, T, 3, H, W]
                targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    losses = net(images, batch["image_sizes"], targets)
                names = sorted(losses)
                values = torch.stack([losses[k].detach().float() for k in names])  # [K]
                if world > 1:
                    dist.all_reduce(values)
                    values /= world
                check_finite(values, names, it + 1)
                loss = sum(losses[k].float() for k in names)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                grad_norm = float("nan")
                if tc.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip))
                scaler.step(optimizer)
                scaler.update()
                it += 1

                now = time.perf_counter()
                t_data += data_done - tick
                t_iter += now - tick
                tick = now
                n_logged += 1
                for k, v in zip(names + ["loss"], values.tolist() + [values.sum().item()]):
                    sums[k] = sums.get(k, 0.0) + v
                if rank == 0 and (it % tc.log_interval == 0 or it == stop_at):
                    record = {"event": "train", "iter": it, "epoch": epoch + 1, "lr": lr,
                              **{k: v / n_logged for k, v in sums.items()},
                              "grad_norm": grad_norm, "time": t_iter / n_logged,
                              "data_time": t_data / n_logged, "memory_mb": _memory_mb(device),
                              "eta_s": t_iter / n_logged * (stop_at - it)}
                    log(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                    sums, t_iter, t_data, n_logged = {}, 0.0, 0.0, 0
                if bar is not None:
                    bar.update(1)
                epoch_end = it % iters_per_epoch == 0
                if epoch_end:
                    checkpoint(f"epoch_{epoch + 1}.pth", it, epoch + 1, 0)
                elif (tc.checkpoint_interval and it % tc.checkpoint_interval == 0) or it == stop_at:
                    checkpoint(f"iter_{it}.pth", it, epoch, it - epoch * iters_per_epoch)
                if it >= stop_at:
                    break
                tick = time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
        if rank == 0:
            log.close()
    return {"iter": it, "epoch": it // iters_per_epoch, "run_dir": str(run_dir)}


# ----------------------------------------------------------------------------- entry


def train_main(config_path, work_dir=None, gpus: int = 1, resume=False, overrides=()) -> int:
    """``lvod train``: load the config, pick the run folder, resume if asked, train.

    ``resume``: True (resume from ``<run>/latest.pth``, error if absent), a checkpoint
    path, or False (auto-resume when ``<run>/latest.pth`` exists). ``gpus > 1`` relaunches
    this module under ``torch.distributed.run``. Prints the run folder; returns 0 on success.
    """
    cfg = load_config(config_path, overrides)
    run_dir = Path(work_dir) if work_dir else Path("work_dirs") / cfg.name
    under_torchrun = "LOCAL_RANK" in os.environ
    if gpus > 1 and not under_torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus),
               "-m", "lvod.engine.train", str(config_path), *overrides, "--work-dir", str(run_dir)]
        if resume:
            cmd += ["--resume"] if resume is True else ["--resume-from", str(resume)]
        print(f"run folder: {run_dir}\nlaunching: {' '.join(cmd)}", flush=True)
        return subprocess.call(cmd)
    latest = run_dir / "latest.pth"
    if resume is True and not latest.exists():
        raise DataError(latest, "resume", "there is no checkpoint to resume from",
                        "drop --resume to start fresh, or pass the run's --work-dir")
    ckpt = Path(resume) if resume not in (True, False, None) else (latest if latest.exists() else None)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(f"run folder: {run_dir}" + (f" (resuming from {ckpt})" if ckpt else ""), flush=True)
    try:
        result = train(cfg, run_dir, resume=ckpt)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(f"done: {result['iter']} iterations; run folder: {run_dir}", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvod.engine.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="resume from <work-dir>/latest.pth")
    parser.add_argument("--resume-from", default=None, help="resume from this checkpoint")
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    args = parser.parse_intermixed_args(argv)
    resume = args.resume_from or args.resume
    try:
        return train_main(args.config, args.work_dir, args.gpus, resume, args.overrides)
    except (DataError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
