"""Run lvod's notebooks headless with papermill, into a run folder, as .ipynb plus HTML.

The committed notebooks under ``notebooks/`` carry no outputs; the executed copy written
here is the record of a run. A failing cell fails the run, and the executed notebook
(with the error in it) is still written so it can be read.

:func:`run_notebook` executes one notebook; :func:`run_notebooks` is ``lvod notebooks
run`` (names, parameters, a run folder); :func:`list_notebooks` is ``lvod notebooks list``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def list_notebooks() -> list[Path]:
    """The ordered notebooks (``NN_name.ipynb``)."""
    return sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def resolve(name: str) -> list[Path]:
    """Turn ``01``, ``01_dataset_statistics_and_grouping``, a path, or ``all`` into notebook paths."""
    if name == "all":
        found = list_notebooks()
        if not found:
            raise FileNotFoundError(f"no notebooks in {NOTEBOOK_DIR}")
        return found
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return [path]
    matches = [p for p in list_notebooks() if p.stem == name or p.stem.split("_", 1)[0] == name.zfill(2)]
    if len(matches) != 1:
        names = ", ".join(p.stem for p in list_notebooks())
        raise FileNotFoundError(f"notebook {name!r} not found; valid names: all, {names}")
    return matches


def parse_value(text: str):
    """A ``-p KEY VALUE`` value: JSON when it parses (numbers, lists, true/false), else text."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def run_notebook(
    nb_path, run_dir, parameters: dict | None = None, *, html: bool = True, kernel_name: str = "python3", cwd=None
) -> dict:
    """Execute one notebook into ``run_dir`` with papermill and export HTML.

    Returns ``{"ipynb": Path, "html": Path | None}``. Raises papermill's
    ``PapermillExecutionError`` when a cell fails; the executed notebook is written first.
    """
    import papermill as pm

    nb_path, run_dir = Path(nb_path), Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / nb_path.name
    try:
        pm.execute_notebook(
            str(nb_path),
            str(out),
            parameters=parameters or {},
            kernel_name=kernel_name,
            cwd=str(cwd or Path.cwd()),
            progress_bar=False,
            log_output=False,
            # The kernel talks to papermill over TCP on 127.0.0.1 (this machine only) and
            # ipykernel warns "running over TCP without encryption" at every start, which
            # reads like a security problem on a headless run: keep the kernel's own log to
            # errors. Cell output, warnings and tracebacks go to the notebook as before.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    finally:
        html_path = _export_html(out) if html and out.exists() else None
    return {"ipynb": out, "html": html_path}


def _export_html(ipynb: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    from lvod.io import atomic_write

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(ipynb), as_version=4))
    html = ipynb.with_suffix(".html")
    with atomic_write(html, "w", encoding="utf-8") as fh:
        fh.write(body)
    return html


class NotebookFailed(RuntimeError):
    """A cell of a notebook failed; the message names the notebook, the cell and the
    executed copy kept for reading (``.ipynb`` attribute)."""

    def __init__(self, message: str, ipynb: Path):
        super().__init__(message)
        self.ipynb = ipynb


def run_notebooks(name: str, params=(), run_dir=None) -> list[dict]:
    """``lvod notebooks run``: execute one notebook (or ``all``) into ``run_dir``.

    ``params``: ``[(key, text value)]`` (values parsed by :func:`parse_value`). With one
    notebook, a parameter its ``parameters`` cell does not declare is a ``ValueError``;
    with ``all``, each notebook receives the parameters it declares. ``run_dir`` defaults
    to ``runs/notebooks-<timestamp>``. Returns one :func:`run_notebook` result per notebook,
    ``{"ipynb": Path, "html": Path | None}``; the first failing cell raises
    :class:`NotebookFailed`. An unknown notebook name raises ``FileNotFoundError``.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    user = {k: parse_value(v) for k, v in (params or [])}
    if run_dir is None:
        run_dir = Path("runs") / f"notebooks-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    notebooks = resolve(name)
    done = []
    for nb in notebooks:
        declared = set(pm.inspect_notebook(str(nb)))
        unknown = sorted(set(user) - declared)
        if unknown and len(notebooks) == 1:
            raise ValueError(f"{nb.name} has no parameter(s) {unknown}; it declares {sorted(declared)}")
        parameters = {k: v for k, v in user.items() if k in declared}
        if "run_dir" in declared:
            parameters.setdefault("run_dir", str(run_dir))
        logger.info("running %s -> %s", nb.name, run_dir)
        try:
            paths = run_notebook(nb, run_dir, parameters)
        except PapermillExecutionError as exc:
            kept = Path(run_dir) / nb.name
            raise NotebookFailed(
                f"{nb.name} failed in cell {exc.cell_index}: {exc.ename}: {exc.evalue}\n"
                f"the executed notebook is kept for reading: {kept}",
                kept,
            ) from None
        logger.info("  wrote %s", paths["ipynb"] if not paths["html"] else f"{paths['ipynb']} and {paths['html']}")
        done.append(paths)
    return done
