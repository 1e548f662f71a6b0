"""Shared test helpers: resources that are optional locally but required in CI (CI=true)."""
import os
from pathlib import Path

import pytest

from pocl_utils import data

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(reason: str):
    """Skip locally; in CI a missing resource is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true, so this is required)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The MiniLLM-processed real data: POCL_DATA_DIR, else ../shared/data beside the repository."""
    for candidate in (os.environ.get("POCL_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / data.REAL_SETS["valid"]).is_file():
            return Path(candidate)
    require("real data not found: set POCL_DATA_DIR to the MiniLLM-processed data")
