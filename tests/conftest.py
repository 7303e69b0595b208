"""Shared test fixtures: where the real external data lives, small helpers."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "external-data"


@pytest.fixture(scope="session")
def external_data() -> Path:
    """Path to ``../shared/external-data``; skips the test when that folder is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the real external data ships in ../shared/ beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The built-in demo dataset at its default size and seed 0 (written once per session)."""
    from lvod.data.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("demo"), seed=0)
