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


def spy_on_gkd(trainer) -> tuple[list, list]:
    """Wrap a TRL GKD trainer's collator and on-policy generation: returns (seen, generated), which fill as it trains
    with each batch's "row" column and the global step of each generation."""
    seen, generated = [], []
    collate, generate = trainer.data_collator, trainer.generate_on_policy_outputs

    def collating(examples):
        seen.append([e["row"] for e in examples])
        return collate(examples)

    def generating(*a):
        generated.append(trainer.state.global_step)
        return generate(*a)

    trainer.data_collator, trainer.generate_on_policy_outputs = collating, generating
    return seen, generated


def load_script(name: str):
    """The module of scripts/<name>.py (the scripts are not a package), loaded from its file."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
