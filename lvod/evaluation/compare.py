"""Paired comparison of runs on one val set: differences with bootstrap intervals and a
verdict, and the spread across training seeds.

A *method* is one or more runs (one per training seed) of the same configuration. For
each run, :func:`lvod.evaluation.evaluate` with ``bootstrap=N, seed=S, keep_samples=True``
gives every metric on the same ``N`` resamples of the val videos (the resamples depend
only on the videos, ``N`` and ``S``), so a difference is computed resample by resample:
the *paired* bootstrap of REFERENCE section 8. With several seeds, a method's value on a
resample is the mean over its seeds.

Verdict of a difference (method minus baseline): ``better`` when its 95 % interval lies
above 0, ``worse`` when below, ``unclear`` when it contains 0 (or is undefined).

:func:`compare_methods` returns ``{"baseline", "resamples", "seed", "level",
"ground_truth", "methods": {name: {"runs": [...], "num_seeds"}}, "rows": [...]}``; each
row is one metric of one method::

    {"method", "metric", "scope": "overall" | "group" | "class" | "motion", "key",
     "value": mean over seeds, "seed_std", "seed_min", "seed_max", "ci": [lo, hi],
     "diff", "diff_ci": [lo, hi], "verdict"}

(the baseline's own rows carry ``diff = 0`` and no verdict).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from lvod.errors import DataError
from lvod.evaluation.bootstrap import CI_LEVEL, default_resamples, interval, nanmean
from lvod.evaluation.report import group_label
from lvod.io import atomic_write, save_json

VERDICTS = ("better", "worse", "unclear")


def verdict(ci) -> str:
    """``better`` / ``worse`` / ``unclear`` for a difference interval ``[lo, hi]``."""
    if ci is None:
        return "unclear"
    lo, hi = ci
    return "better" if lo > 0 else "worse" if hi < 0 else "unclear"


def _metric_table(m: dict) -> dict:
    """``{(scope, key): (value, samples (B,))}`` of one evaluated run (with samples)."""
    s = m["bootstrap"]["samples"]
    out = {("overall", "bbox_mAP_50"): (m["bbox_mAP_50"], s["bbox_mAP_50"])}
    if m.get("bbox_mAP") is not None:
        out[("overall", "bbox_mAP")] = (m["bbox_mAP"], s["bbox_mAP"])
    for g, samples in zip(m.get("groups", []), s["groups_ap50"]):
        out[("group", group_label(g))] = (g["ap50"], samples)
    for k, c in enumerate(m["classwise"]):
        out[("class", c["name"])] = (c["ap50"], s["ap50_per_class"][:, k])
    for bucket, value in (m.get("motion") or {}).items():
        out[("motion", bucket)] = (value, s["motion"][bucket])
    return out


def _nan(v) -> float:
    return np.nan if v is None else float(v)


def _check_same_ground_truth(methods: dict) -> dict:
    """All runs must have been evaluated on one ground truth with the same resamples."""
    first = None
    for name, runs in methods.items():
        for i, m in enumerate(runs):
            key = (
                m.get("ground_truth"),
                m["bootstrap"]["resamples"],
                m["bootstrap"]["seed"],
                m["bootstrap"]["num_videos"],
            )
            if first is None:
                first = (name, i, key)
            elif key != first[2]:
                raise DataError(
                    f"run {i} of {name!r}",
                    "ground truth / resamples",
                    f"{key} differs from {first[2]} of run {first[1]} of {first[0]!r}",
                    "compare runs evaluated on the same annotation file with the same --bootstrap N and seed",
                )
    gt = methods[first[0]][first[1]].get("ground_truth")
    return {"ground_truth": gt, "resamples": first[2][1], "seed": first[2][2]}


def compare_methods(methods: dict[str, list[dict]], baseline: str, *, level: float = CI_LEVEL) -> dict:
    """Differences of every method to ``baseline`` (module docstring).

    ``methods``: ``{name: [metrics of each seed's run]}``, each from ``evaluate(...,
    keep_samples=True)`` on the same ground truth with the same resamples.
    """
    if baseline not in methods:
        raise DataError(
            "--baseline",
            baseline,
            f"is not one of the runs ({', '.join(methods)})",
            "name one of the runs as the baseline",
        )
    info = _check_same_ground_truth(methods)
    tables = {name: [_metric_table(m) for m in runs] for name, runs in methods.items()}
    keys = list(tables[baseline][0])

    def method_samples(name, key):
        per_seed = [t[key] for t in tables[name] if key in t]
        values = np.array([_nan(v) for v, _ in per_seed])
        samples = nanmean(np.stack([s for _, s in per_seed]), axis=0)
        return values, samples

    rows = []
    for name in methods:
        for key in keys:
            if any(key not in t for t in tables[name]):
                continue
            values, samples = method_samples(name, key)
            ok = values[~np.isnan(values)]
            row = {
                "method": name,
                "metric": "ap50" if key[0] != "overall" else key[1],
                "scope": key[0],
                "key": key[1],
                "value": float(ok.mean()) if len(ok) else None,
                "seed_std": float(ok.std(ddof=1)) if len(ok) > 1 else None,
                "seed_min": float(ok.min()) if len(ok) else None,
                "seed_max": float(ok.max()) if len(ok) else None,
                "ci": interval(samples, level),
            }
            if name == baseline:
                row.update(diff=0.0, diff_ci=None, verdict=None)
            else:
                base_values, base_samples = method_samples(baseline, key)
                base_ok = base_values[~np.isnan(base_values)]
                diff = (row["value"] - float(base_ok.mean())) if row["value"] is not None and len(base_ok) else None
                diff_ci = interval(samples - base_samples, level)
                row.update(diff=diff, diff_ci=diff_ci, verdict=verdict(diff_ci))
            rows.append(row)
    first = methods[baseline][0].get("groups") or [{}]
    return {
        "baseline": baseline,
        "level": level,
        "group_basis": first[0].get("basis"),
        **info,
        "methods": {
            name: {"num_seeds": len(runs), "runs": [m.get("results_file") for m in runs]}
            for name, runs in methods.items()
        },
        "rows": rows,
    }


def format_comparison(result: dict, scopes=("overall", "group", "motion")) -> str:
    """Markdown table of :func:`compare_methods` rows in ``scopes`` (classes are long: CSV)."""

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    def ci(c):
        return "-" if c is None else f"[{c[0]:.3f}, {c[1]:.3f}]"

    lines = [
        f"Baseline: {result['baseline']}; {result['resamples']} paired bootstrap resamples of the val "
        f"videos (seed {result['seed']}), {int(result['level'] * 100)} % intervals."
        + (
            f" Frequency groups by training {result['group_basis']} per class."
            if result.get("group_basis") and "group" in scopes
            else ""
        ),
        "",
        "| method | metric | value | 95% CI | seeds (std) | diff vs baseline | 95% CI of diff | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["scope"] not in scopes:
            continue
        metric = r["key"] if r["scope"] == "overall" else f"{r['scope']} {r['key']} AP50"
        n = result["methods"][r["method"]]["num_seeds"]
        seeds = f"{n} ({f(r['seed_std'])})" if n > 1 else "1"
        lines.append(
            f"| {r['method']} | {metric} | {f(r['value'])} | {ci(r['ci'])} | {seeds} | "
            f"{f(r['diff'])} | {ci(r['diff_ci'])} | {r['verdict'] or '-'} |"
        )
    return "\n".join(lines) + "\n"


def results_path(path) -> Path:
    """A run folder's detections (``results.npz``, or ``test/results.npz`` where ``lvod
    test`` put them by default) or a results file as given."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "results.npz", path / "test" / "results.npz"):
            if candidate.is_file():
                return candidate
        raise DataError(
            path,
            "results.npz",
            "the run folder has no detections",
            "run `lvod test CONFIG --checkpoint CKPT --out RUN/results.json` first",
        )
    if not path.is_file():
        raise DataError(path, "file", "does not exist", "give a run folder or a results .npz/.json")
    return path


def load_comparison(path, methods: dict, *, baseline: str, bootstrap: int | None = None) -> dict:
    """A ``compare.json`` that :func:`compare_runs` wrote, checked to be the comparison of
    exactly ``methods`` (``{name: [run folder or results file, ...]}``, as compare_runs
    takes them) against ``baseline`` with ``bootstrap`` resamples (None: any), so that a
    report can reuse it instead of evaluating every run again. Refuses, naming the
    difference, a file made for other runs, another baseline or other resamples."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file", "does not exist", "run `lvod compare ... --out DIR` (it writes DIR/compare.json)")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, "file", f"is not JSON ({exc})", "pass the compare.json lvod compare wrote") from exc
    fix = "compare these runs again (lvod compare), or leave the comparison out so that it is computed"
    if result.get("baseline") != baseline:
        raise DataError(path, "baseline", f"is {result.get('baseline')!r}, not {baseline!r}", fix)
    if bootstrap is not None and result.get("resamples") != bootstrap:
        raise DataError(path, "resamples", f"is {result.get('resamples')}, not {bootstrap}", fix)
    recorded = {name: rec.get("runs") for name, rec in (result.get("methods") or {}).items()}
    wanted = {name: [str(results_path(p).resolve()) for p in paths] for name, paths in methods.items()}
    for name in sorted(set(recorded) | set(wanted)):
        have = [str(Path(r).resolve()) if r else None for r in recorded.get(name) or []]
        if have != wanted.get(name):
            raise DataError(
                path,
                f"methods.{name}.runs",
                f"compares {recorded.get(name)}, not {methods.get(name)}" if name in wanted else "is not asked for",
                fix,
            )
    return result


def _check_recorded_ground_truth(results: Path, gt_id: dict) -> None:
    """Refuse a run whose own metrics.json says it was scored on another ground truth."""
    metrics = results.with_name("metrics.json")
    if not metrics.is_file():
        return
    recorded = json.loads(metrics.read_text(encoding="utf-8")).get("ground_truth")
    if recorded and recorded.get("fingerprint") not in (None, gt_id["fingerprint"]):
        raise DataError(
            metrics,
            "ground_truth",
            f"the run was evaluated on {recorded.get('file')} "
            f"(fingerprint {recorded.get('fingerprint')}), not on {gt_id['file']} "
            f"(fingerprint {gt_id['fingerprint']})",
            "compare runs tested on the same annotation file",
        )


def compare_runs(
    ann,
    methods: dict,
    *,
    baseline: str,
    groups=None,
    protocol: str = "coco",
    bootstrap: int | None = None,
    seed: int = 0,
    out=None,
) -> dict:
    """``lvod compare``: evaluate every run's detections on ``ann`` with the same
    ``bootstrap`` resamples and compare each method with ``baseline``.

    ``methods``: ``{name: [run folder or results file, one per training seed]}``. Returns
    :func:`compare_methods`' dict plus ``"files"`` (``compare.json``, ``compare.md``,
    ``compare.csv`` in ``out`` when given).
    """
    from lvod.data.cocovid import load_cocovid
    from lvod.evaluation.report import evaluate, ground_truth_id
    from lvod.evaluation.results import load_results

    gt = load_cocovid(ann)
    resamples = bootstrap or default_resamples(len(gt.img_ids))
    gt_id = ground_truth_id(gt)
    evaluated = {}
    for name, paths in methods.items():
        evaluated[name] = []
        for path in paths:
            results = results_path(path)
            _check_recorded_ground_truth(results, gt_id)
            metrics = evaluate(
                gt,
                load_results(results),
                groups=groups,
                protocol=protocol,
                bootstrap=resamples,
                seed=seed,
                keep_samples=True,
                results_file=str(results),
            )
            evaluated[name].append({**metrics, "results_file": str(results)})  # compare.json names the runs
    result = compare_methods(evaluated, baseline)
    result["protocol"] = protocol
    result["files"] = {}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result["files"]["json"] = save_json({k: v for k, v in result.items() if k != "files"}, out / "compare.json")
        with atomic_write(out / "compare.md", "w", encoding="utf-8") as fh:
            fh.write(
                "# lvod compare\n\n"
                + format_comparison(result)
                + "\n## Classes\n\n"
                + format_comparison(result, scopes=("class",))
            )
        result["files"]["markdown"] = out / "compare.md"
        fields = [
            "method",
            "scope",
            "key",
            "value",
            "ci_lo",
            "ci_hi",
            "seed_std",
            "seed_min",
            "seed_max",
            "diff",
            "diff_ci_lo",
            "diff_ci_hi",
            "verdict",
        ]
        with atomic_write(out / "compare.csv", "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            for r in result["rows"]:
                lo, hi = r["ci"] or (None, None)
                dlo, dhi = r["diff_ci"] or (None, None)
                w.writerow({**r, "ci_lo": lo, "ci_hi": hi, "diff_ci_lo": dlo, "diff_ci_hi": dhi})
        result["files"]["csv"] = out / "compare.csv"
    return result
