"""Figures the notebooks show. Each function takes tables, draws on a new figure, returns it.

Notebooks only call these; no plotting code lives in a notebook.
"""

from __future__ import annotations

import numpy as np


def _plt():
    # matplotlib picks the inline backend in a kernel and Agg on a headless machine.
    import matplotlib.pyplot as plt

    return plt


def instances_per_class(stats, table=None, *, column: str = "boxes", ax=None):
    """Bar chart of ``column`` per class, sorted descending, log y, with group boundaries.

    ``stats``: DataFrame with ``category_id``, ``name`` and ``column``.
    ``table``: optional ``GroupTable``; its groups are coloured (with a legend naming each
    group and its count bin) and their edges drawn. Pass the ``column`` the table was built
    from (``boxes`` for ``basis="instances"``, ``key_frames`` for ``"images"``).
    """
    plt = _plt()
    df = stats.sort_values(column, ascending=False).reset_index(drop=True)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(6, 0.35 * len(df)), 4))
    colors = np.full(len(df), "C0", dtype=object)
    if table is not None:
        group_of = {int(c): g for g, members in enumerate(table.groups) for c in members}
        colors = np.array([f"C{group_of.get(int(c), -1) % 10}" for c in df["category_id"]], dtype=object)
        for edge in getattr(table, "edges", None) or []:
            ax.axhline(edge, color="grey", ls="--", lw=0.8)
        from matplotlib.patches import Patch

        labels = getattr(table, "group_labels", None) or [f"group {g + 1}" for g in range(len(table.groups))]
        handles = [Patch(color=f"C{g % 10}", label=label) for g, label in enumerate(labels)]
        ax.legend(handles=handles, title="frequency group", fontsize=8)
    ax.bar(np.arange(len(df)), df[column].clip(lower=0.8), color=list(colors))
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(df)), df["name"], rotation=75, fontsize=8)
    ax.set_ylabel(f"{column} (log)")
    ax.set_title(f"{column} per class, sorted" + (" (colour = frequency group)" if table is not None else ""))
    fig.tight_layout()
    return fig


def tracks_and_videos(stats):
    """Tracks and videos per class, side by side, in the same class order as the box counts."""
    plt = _plt()
    df = stats.sort_values("boxes", ascending=False).reset_index(drop=True)
    x = np.arange(len(df))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(df)), 4))
    ax.bar(x - 0.2, df["tracks"], width=0.4, label="tracks")
    ax.bar(x + 0.2, df["videos"], width=0.4, label="videos")
    ax.set_xticks(x, df["name"], rotation=75, fontsize=8)
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("tracks and videos per class")
    fig.tight_layout()
    return fig


def distributions(track_lengths, box_areas):
    """Histograms of track length (frames) and box size (sqrt area, pixels, COCO buckets marked)."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    tl = np.asarray(track_lengths, dtype=float)
    a.hist(tl, bins=min(50, max(5, len(np.unique(tl)))), color="C2")
    a.set_xlabel("track length (frames)")
    a.set_ylabel("tracks")
    side = np.sqrt(np.clip(np.asarray(box_areas, dtype=float), 0, None))
    b.hist(side, bins=50, color="C3")
    for edge, label in ((32, "small|medium"), (96, "medium|large")):
        b.axvline(edge, color="k", ls="--", lw=0.8)
        b.text(edge, b.get_ylim()[1] * 0.9, label, fontsize=7, rotation=90, ha="right")
    b.set_xlabel("box size sqrt(w*h) (pixels)")
    fig.tight_layout()
    return fig


def group_table_frame(table, stats=None):
    """One row per object group: name, count bin, classes, count range and the logit slice
    (a DataFrame; the counts are ``table.basis_description``)."""
    import pandas as pd

    known = table.counts is not None
    counts = dict(zip(map(int, table.cat_ids), map(int, table.counts))) if known else {}
    names = dict(zip(map(int, table.cat_ids), table.cat_names))
    rows = []
    for g, members in enumerate(table.groups, start=1):
        c = [counts[int(m)] for m in members] if known else [float("nan")]
        start, length = (int(v) for v in table.pred_slice[g])
        rows.append(
            {
                "group": table.group_names[g - 1],
                "bin": table.group_bins[g - 1],
                "classes": len(members),
                "min_count": min(c),
                "max_count": max(c),
                "total_count": sum(c) if known else float("nan"),
                "logit_slice": f"[{start}, {start + length})",
                "names": ", ".join(names[int(m)] for m in members),
            }
        )
    return pd.DataFrame(rows)


def ap_vs_frequency(frame, runs):
    """Per-class AP@50 against training box count (log x), one series per run.

    ``frame``: from ``lvod.analysis.compare_runs`` (``train_boxes``, ``ap50_<run>``, and
    ``ap50_lo_<run>`` / ``ap50_hi_<run>``: drawn as 95 % error bars where present). Runs
    are nudged apart along x so their bars do not hide each other.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, run in enumerate(runs):
        x = frame["train_boxes"].astype(float) * 1.06 ** (i - (len(runs) - 1) / 2)
        y = frame[f"ap50_{run}"].astype(float)
        err = _yerr(y, frame.get(f"ap50_lo_{run}"), frame.get(f"ap50_hi_{run}"))
        ax.errorbar(x, y, yerr=err, fmt="o", ms=4, capsize=2, lw=0.8, label=run, color=f"C{i}", alpha=0.85)
    for _, row in frame.iterrows():
        ax.annotate(row["name"], (row["train_boxes"], row[f"ap50_{runs[0]}"]), fontsize=6, alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("training boxes (log)")
    ax.set_ylabel("AP@50")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.set_title("per-class AP@50 against class frequency")
    fig.tight_layout()
    return fig


def _yerr(y, lo, hi):
    """Matplotlib ``yerr`` (2, N) from interval ends (None or all-NaN: no bars)."""
    if lo is None or hi is None:
        return None
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    if np.all(np.isnan(lo)):
        return None
    y = np.asarray(y, dtype=float)
    return np.stack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])


def grouped_bars(df, *, ylabel: str, title: str, lo=None, hi=None):
    """Bars for a DataFrame whose rows are categories (groups, speeds) and columns runs;
    ``lo``/``hi``: frames of the same shape with the 95 % interval ends, drawn as error bars
    (e.g. ``lvod.analysis.group_frame(metrics, "lo")``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(df)), 3.5))
    width = 0.8 / max(1, df.shape[1])
    x = np.arange(len(df))
    for i, run in enumerate(df.columns):
        err = None if lo is None or hi is None else _yerr(df[run], lo[run], hi[run])
        ax.bar(
            x + (i - (df.shape[1] - 1) / 2) * width,
            df[run].astype(float),
            width=width,
            label=str(run),
            yerr=err,
            capsize=3,
        )
    ax.set_xticks(x, [str(i) for i in df.index])
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.0)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def difference_intervals(rows: list, *, scopes=("overall", "group", "motion")):
    """Forest plot of ``lvod compare`` rows: each method's AP@50 minus the baseline's with
    its paired-bootstrap 95 % interval, per overall metric, group and motion bucket; the
    verdict colours the line (better green, worse red, unclear grey)."""
    plt = _plt()
    shown = [r for r in rows if r["scope"] in scopes and r.get("diff_ci") is not None]
    fig, ax = plt.subplots(figsize=(7, 0.4 * max(3, len(shown)) + 1))
    colour = {"better": "tab:green", "worse": "tab:red", "unclear": "tab:gray"}
    for y, r in enumerate(shown):
        lo, hi = r["diff_ci"]
        ax.plot([lo, hi], [y, y], color=colour[r["verdict"]], linewidth=2)
        ax.plot([r["diff"]], [y], "o", color=colour[r["verdict"]])
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(shown)), [f"{r['method']}: {r['key']}" for r in shown])
    ax.invert_yaxis()
    ax.set_xlabel("difference to the baseline (AP), 95% paired bootstrap interval")
    ax.set_title("does the method help? (green: better, red: worse, grey: unclear)")
    fig.tight_layout()
    return fig


def gain_bars(frame, run: str, baseline: str, rows=None):
    """AP@50 gain of ``run`` over ``baseline`` per class, classes sorted by training count.

    ``rows``: ``lvod compare`` rows (``compare_runs(...)["rows"]``); their per-class paired
    95 % intervals are drawn as error bars, and a bar is green / red only when its verdict
    is better / worse (grey: unclear). Without rows the colour is the sign of the gain.
    """
    plt = _plt()
    df = frame.sort_values("train_boxes", ascending=False)
    gain = df[f"gain_{run}"].astype(float)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(df)), 3.5))
    err, colour = None, np.where(gain >= 0, "C2", "C3")
    if rows is not None:
        paired = {r["key"]: r for r in rows if r["scope"] == "class" and r["method"] == run}
        found = [paired.get(n) for n in df["name"]]
        ci = np.array([r["diff_ci"] if r and r.get("diff_ci") else (np.nan, np.nan) for r in found], dtype=float)
        err = _yerr(gain.fillna(0), ci[:, 0], ci[:, 1])
        shade = {"better": "C2", "worse": "C3"}
        colour = [shade.get(r["verdict"], "0.6") if r else "0.6" for r in found]
    ax.bar(np.arange(len(df)), gain.fillna(0), color=colour, yerr=err, capsize=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(df)), df["name"], rotation=75, fontsize=8)
    ax.set_ylabel(f"AP@50 {run} - {baseline}")
    ax.set_title(f"gain of {run} over {baseline} (classes from frequent to rare)")
    fig.tight_layout()
    return fig


def weight_norms(norms: dict, counts, names=None):
    """Classifier weight norm per class against training count, one series per run.

    ``names``: class names in the order of ``counts`` (ticks are the names, from the most
    to the least frequent class; without names, the class index)."""
    plt = _plt()
    order = np.argsort(-np.asarray(counts), kind="stable")
    fig, ax = plt.subplots(figsize=(max(7, 0.4 * len(order)), 3.8))
    for i, (run, n) in enumerate(norms.items()):
        ax.plot(np.arange(len(order)), np.asarray(n)[order], marker="o", ms=3, label=run, color=f"C{i}")
    if names is not None:
        ax.set_xticks(np.arange(len(order)), [str(names[i]) for i in order], rotation=75, fontsize=8)
        ax.set_xlabel("class, from most to least frequent in training")
    else:
        ax.set_xlabel("classes, sorted from most to least frequent")
    ax.set_ylabel("||w_c||")
    ax.legend()
    ax.set_title("classifier weight norm per class (BAGS paper's diagnostic)")
    fig.tight_layout()
    return fig


def _place_labels(anchors, height: float) -> list:
    """Move text anchors ``(x, y, width)`` down until no two label boxes overlap (greedy,
    in the given order); returns the new ``(x, y)``."""
    placed, out = [], []
    for x, y, w in anchors:
        while any(abs(y - py) < height and x < px + pw and px < x + w for px, py, pw in placed):
            y += height
        placed.append((x, y, w))
        out.append((x, y))
    return out


def draw_frame(
    image,
    boxes,
    labels,
    scores,
    names,
    *,
    ax=None,
    score_thr: float = 0.3,
    title: str = "",
    gt_boxes=None,
    gt_labels=None,
    max_dets: int = 10,
):
    """Show an image (H, W, 3 uint8) with ``[x1, y1, x2, y2]`` detections (solid, class and
    score above the box) and, when given, the ground truth (dashed white, class name under
    the box). At most ``max_dets`` detections at or above ``score_thr`` are drawn, highest
    score first; labels are moved apart so that they stay readable."""
    plt = _plt()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 4))
    ax.imshow(image)
    h = np.asarray(image).shape[0]
    line = 0.045 * h  # label height in pixels at fontsize 6 on the usual panel size
    texts = []
    if gt_boxes is not None:
        for box, label in zip(np.asarray(gt_boxes).reshape(-1, 4), np.asarray(gt_labels).reshape(-1)):
            x1, y1, x2, y2 = box
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white", lw=1.2, ls="--"))
            texts.append((x1, y2 + 1, f"GT {names[int(label)]}", "white", "k"))
    scores = np.asarray(scores)
    keep = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_thr][:max_dets]
    boxes, labels = np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1)
    for i in keep:
        x1, y1, x2, y2 = boxes[i]
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.2))
        texts.append((x1, max(y1 - line, 0), f"{names[int(labels[i])]} {scores[i]:.2f}", "lime", "k"))
    width = np.asarray(image).shape[1]
    spots = _place_labels([(x, y, 0.012 * width * len(t)) for x, y, t, _, _ in texts], line)
    for (x, y), (_, _, text, face, colour) in zip(spots, texts):
        ax.text(x, y, text, color=colour, fontsize=6, va="top", bbox={"facecolor": face, "alpha": 0.7, "pad": 0.5})
    if gt_boxes is not None:
        from matplotlib.lines import Line2D

        ax.legend(
            handles=[
                Line2D([], [], color="lime", lw=1.2, label="detection"),
                Line2D([], [], color="white", lw=1.2, ls="--", label="ground truth"),
            ],
            fontsize=6,
            loc="lower right",
            facecolor="0.3",
            labelcolor="white",
        )
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    return fig


def save(fig, path, *, dpi: int = 120):
    """Write a figure (format from the suffix) atomically; returns the path."""
    from pathlib import Path

    from lvod.io import atomic_write

    path = Path(path)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    return path
