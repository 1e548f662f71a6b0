"""Where the real data lives: the data directory (POCL_DATA_DIR) and the MiniLLM file of each role."""
from __future__ import annotations

import os
from pathlib import Path

from .records import DataError, MissingDataError, load_instructions

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_DIR.parent

# role -> path inside the data directory, as in MiniLLM's processed data (see data/README.md).
REAL_SETS: dict[str, str] = {
    "train": "dolly/dolly_train_11425.jsonl",
    "valid": "dolly/dolly_dev_1000.jsonl",
    "DollyEval": "dolly/dolly_test_500.jsonl",
    "SelfInst": "self-inst/self_inst_test_242.jsonl",
    "VicunaEval": "vicuna/vicuna_test_80.jsonl",
    "S-NI": "sinst/sinst_11__test_1694.jsonl",
    "UnNI": "uinst/uinst_11__first460.jsonl",
}
EVAL_SETS = ("DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI")
# What `download-dolly` writes; real_data_path falls back to these for the Dolly roles.
HUB_DOLLY_FILES: dict[str, str] = {
    "train": "dolly/hub_train.jsonl",
    "valid": "dolly/hub_valid.jsonl",
    "DollyEval": "dolly/hub_test.jsonl",
}
DOLLY_HUB_NAME = "databricks/databricks-dolly-15k"


def data_dir() -> Path:
    """The data directory: $POCL_DATA_DIR if set, else <repo root>/data."""
    env = os.environ.get("POCL_DATA_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def real_data_path(role: str, root: str | os.PathLike | None = None) -> Path:
    """Path of a real set (a key of REAL_SETS) under `root` (default: data_dir()).

    For the Dolly roles the file written by `download-dolly` is accepted when MiniLLM's is absent.

    `root`: the data folder; None = data_dir().
    Returns the set's JSON Lines file.
    Raises DataError: an unknown role.
    Raises MissingDataError: (a DataError and a FileNotFoundError) no file, with how to get the data.
    """
    if role not in REAL_SETS:
        raise DataError(f"unknown data role {role!r}; valid roles: {', '.join(REAL_SETS)}")
    root = Path(root) if root is not None else data_dir()
    for relative in (REAL_SETS[role], HUB_DOLLY_FILES.get(role)):
        if relative is not None and (root / relative).is_file():
            return root / relative
    raise MissingDataError(_missing_set_message(role, root))


def _missing_set_message(role: str, root: Path) -> str:
    message = (
        f"real data set {role!r} not found: expected {root / REAL_SETS[role]}. "
        "The real instruction data is not shipped with the repository. Set POCL_DATA_DIR to a folder "
        "holding the MiniLLM-processed data (dolly/, self-inst/, vicuna/, sinst/, uinst/; see data/README.md)"
    )
    if role in HUB_DOLLY_FILES:
        message += (", or get Dolly from the Hugging Face hub with `python -m pocl_utils.data download-dolly "
                    "--out DIR` and set POCL_DATA_DIR=DIR")
    return message + "."


def load_real(role: str, root: str | os.PathLike | None = None) -> list[dict]:
    """load_instructions(real_data_path(role, root)).

    role, root: as in `real_data_path`.
    Returns the set's records (`load_instructions`).
    """
    return load_instructions(real_data_path(role, root))

