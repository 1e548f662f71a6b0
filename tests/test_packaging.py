"""The project's set-up files agree with each other."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r for r in project["dependencies"] + sum(project["optional-dependencies"].values(), [])}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    have = {_name(r): r for r in pip if not r.startswith("-e")}
    assert have == wanted


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    commands = [line.split("#", 1)[0].strip() for line in test_cmd]
    assert commands[:2] == ["make reproduce", "make test"]  # the main job first, then the tests
    assert re.search(r"^make test$", ci, re.M)


def test_gpu_workflow_runs_the_collection_on_a_gpu_runner():
    """The workflow for users' self-hosted GPU runners: valid YAML, a GPU runner, a CUDA check, the collection on a
    profile that exists, with its outputs uploaded even when a step fails."""
    from pocl_utils.experiment.config import PROFILES
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "gpu.yml").read_text())
    job = flow["jobs"]["collection"]
    assert "gpu" in job["runs-on"] and "self-hosted" in job["runs-on"]
    assert flow[True]["workflow_dispatch"]["inputs"]["profile"]["default"] in PROFILES  # YAML reads `on:` as True
    script = "\n".join(step.get("run", "") for step in job["steps"])
    assert "torch.cuda.is_available()" in script and 'pocl-reproduce --profile "$PROFILE"' in script
    upload = next(step for step in job["steps"] if "upload-artifact" in step.get("uses", ""))
    assert upload["if"] == "always()" and "results/${{ env.PROFILE }}/" in upload["with"]["path"]


def test_every_subpackage_is_packaged_and_the_entry_point_resolves():
    """pyproject's package search finds every folder of pocl_utils that has an __init__.py (a subpackage it missed
    would be absent from an installed wheel), and `pocl-reproduce` names a function that exists."""
    import importlib

    from setuptools import find_packages
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = set(find_packages(str(ROOT), include=pyproject["tool"]["setuptools"]["packages"]["find"]["include"]))
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pocl_utils").rglob("__init__.py")}
    assert found == on_disk and {"pocl_utils", "pocl_utils.experiment", "pocl_utils.notebook"} <= found
    module, function = pyproject["project"]["scripts"]["pocl-reproduce"].split(":")
    assert callable(getattr(importlib.import_module(module), function))
