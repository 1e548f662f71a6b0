"""`pocl-reproduce`: execute the notebook collection in order with papermill for one profile.

Executed copies go to `runs/<profile>/notebooks/` (ignored by git; `--runs-root` or $POCL_RUNS_DIR moves `runs/`),
written atomically: a failed or interrupted notebook is kept beside the last good copy under a name that says so.
Tables and figures go to `results/<profile>/` and `figures/<profile>/` under the runs root (under $POCL_OUTPUT_DIR
when set), not into the committed reference results; `--publish` copies a finished run there (see outputs).
Parameters are checked against each notebook's `parameters` cell before anything runs, so a typo fails at once
with the list of valid names instead of being silently ignored. The student lab (11_lab) is not part of the main
job: `--lab` executes it alone, as a student meets it (`--lab student`, the default) or with the solutions filled in
(`--lab solutions`, generated from notebooks/lab/; see pocl_utils.notebook.lab), into runs/<profile>/lab/. While a
notebook runs, the progress bars of its long steps are echoed to the terminal as one line (`ProgressLine`).
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..experiment.config import OVERRIDES_EXAMPLE, PROFILES, ConfigError, get_profile, is_config_file
from ..experiment.profile_docs import profile_help
from ..experiment.results import REPO_ROOT, atomic_write_json
from ..experiment.workspace import RUNS_ROOT
from .outputs import UNFINISHED, PublishError, output_root, publish

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def collection(folder: Path = NOTEBOOK_DIR, profile: str = "laptop") -> list[Path]:
    """The numbered notebooks of the main job, sorted by name: not the lab; the real-models notebook only for profiles
    with real data (an unknown profile name counts as generated data).
    """
    data = get_profile(profile).data if is_config_file(profile) else getattr(PROFILES.get(profile), "data", "world")
    if data == "files":  # a config's own models and data: the notebooks that need no generated world or paper data
        return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.stem in FILES_NOTEBOOKS)
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb")
                  if "lab" not in p.stem.split("_") and (data == "real" or not p.stem.endswith("_real_models")))


FILES_NOTEBOOKS = ("03_kd_methods",)  # what `pocl-reproduce --config` runs on a config's own data


def profile_name(profile: str) -> str:
    """The name of a profile or of a config file's profile (what its runs/, results/ and figures/ folders are named
    after).

    Raises ConfigError: an unknown profile name, or a config file that does not load (naming its file, line and key).
    """
    if is_config_file(profile):
        return get_profile(profile).name
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}, or --config FILE")
    return profile


def select(notebooks: list[Path], prefixes: list[str], profile: str) -> list[Path]:
    """The notebooks whose file names start with one of `prefixes` (`--only`), in run order.

    `notebooks`: the profile's collection (`collection`).
    `prefixes`: name prefixes, e.g. ["03", "10"] or ["03_kd"].
    Returns the matching notebooks, in the order of `notebooks`.
    Raises ConfigError: a prefix matches no notebook; the one-line message lists the valid prefixes (and says that the
    lab runs with --lab).
    """
    unmatched = [o for o in prefixes if not any(nb.name.startswith(o) for nb in notebooks)]
    if unmatched:
        valid = " ".join(nb.name[:2] for nb in notebooks)
        raise ConfigError(f"--only {' '.join(unmatched)}: no notebook of profile {profile!r} starts with "
                          f"{'it' if len(unmatched) == 1 else 'them'}; valid: {valid} (the lab, 11, runs with --lab)")
    return [nb for nb in notebooks if any(nb.name.startswith(o) for o in prefixes)]


LAB_VARIANTS = ("student", "solutions")


def lab_notebook(variant: str, folder: Path) -> Path:
    """The lab notebook that `--lab VARIANT` executes.

    `variant`: "student" (the committed notebooks/11_lab.ipynb, as a student meets it) or "solutions" (generated from
    notebooks/lab/11_lab_source.ipynb into `folder`/source/, every exercise solved).
    `folder`: the lab's run folder, <runs root>/<profile>/lab.
    Returns the notebook to execute.
    """
    from . import lab
    if variant == "student":
        return lab.STUDENT
    return lab.write(folder / "source" / "11_lab_solutions.ipynb", solutions=True)


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Names and default values of a notebook's `parameters` cell.

    Read with papermill's inspector; a default that is not a Python literal is None.

    Returns {parameter name: default value}.
    """
    import papermill as pm
    return {name: _literal(spec["default"]) for name, spec in pm.inspect_notebook(str(path)).items()}


def _literal(source: str) -> Any:
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return None


def kernel_name() -> str:
    """A Jupyter kernel that runs this very interpreter (so notebooks see this environment's packages).

    Prefers `pocl` (what `make install` registers inside the venv), then `python3`. A spec whose command is a bare
    `python`/`python3` counts, because jupyter_client swaps that for sys.executable; a spec pointing at another
    interpreter (e.g. a user-wide `python3` kernel from another environment) is skipped."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    bare = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    manager = KernelSpecManager()
    for name in ("pocl", "python3"):
        try:
            exe = manager.get_kernel_spec(name).argv[0]
        except (NoSuchKernel, IndexError):
            continue
        if exe in bare or (os.path.exists(exe) and os.path.abspath(exe) == os.path.abspath(sys.executable)):
            return name
    raise ConfigError(f"no Jupyter kernel runs {sys.executable}; register one with: "
                      f"{sys.executable} -m ipykernel install --sys-prefix --name pocl")


def check_parameters(path: Path, params: dict[str, Any]) -> None:
    """Check the parameters given to a notebook against its `parameters` cell, before it runs.

    `params`: the parameters it would get, name -> value.
    Raises ConfigError: naming an unknown parameter and listing the valid ones, or a value whose type does not match the
    parameter's default (e.g. `overrides` must be a JSON object; see `check_value`).
    """
    valid = notebook_parameters(path)
    for key, value in params.items():
        if key not in valid:
            raise ConfigError(f"{path.name}: unknown parameter {key!r}; valid parameters: {', '.join(valid)}")
        check_value(key, value, valid[key])




def check_value(key: str, value: Any, default: Any) -> None:
    """Raises ConfigError (naming `key`; for `overrides` with an example) unless `value` has the JSON type of the
    notebook parameter's `default`. An int is a valid float; a None default takes anything.
    """
    want = _json_kind(default)
    if want is None or _json_kind(value) == want or (want == "number" and _json_kind(value) == "integer"):
        return
    example = f", e.g. {OVERRIDES_EXAMPLE}" if key == "overrides" else ""
    raise ConfigError(f"-p {key} must be a JSON {want}{example}; got {_json_kind(value) or 'null'} {value!r}")


def _json_kind(value: Any) -> str | None:
    """JSON's name for a value's type (None for null)."""
    if value is None:
        return None
    for kind, types in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                        ("object (a mapping of profile keys to values)", Mapping), ("array", (list, tuple))):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def check_extra(profile: str, extra: dict[str, Any]) -> None:
    """Refuse, before any kernel starts, extra parameters (-p NAME VALUE) that would run something other than asked.

    Raises ConfigError: `extra["profile"]` is an unknown profile or differs from `profile`, or get_profile rejects
    `profile` with `extra["overrides"]` (when that is a mapping); (key "device") the profile's device is not on this
    machine (`models.pick_device`).
    """
    if "profile" in extra and extra["profile"] != profile:
        if not isinstance(extra["profile"], str) or extra["profile"] not in PROFILES:
            raise ConfigError(f"-p profile: unknown profile {extra['profile']!r}; valid profiles: "
                              f"{', '.join(PROFILES)}")
        raise ConfigError(f"-p profile {extra['profile']!r} conflicts with --profile {profile!r}; choose the profile "
                          f"with --profile alone")
    p = None
    if isinstance(extra.get("overrides"), Mapping):
        try:
            p = get_profile(profile, dict(extra["overrides"]))
        except ConfigError as e:
            raise ConfigError(f"-p overrides: {e}") from None
    elif is_config_file(profile):
        p = get_profile(profile)
    if p is not None and p.device != "auto":
        from ..modeling.models import pick_device
        pick_device(p.device)  # a device this machine lacks is refused here, before any kernel starts


BAR = re.compile(r"\d+%\|")  # tqdm's text bar, e.g. "teacher SFT:  12%|█▏        | 180/1500 [00:30<03:40, 5.9it/s]"


class ProgressLine:
    """Echo the progress bars of a running notebook's kernel (papermill's stdout_file and stderr_file) to `stream` as
    one line; everything else the kernel prints stays in the executed notebook.

    On a terminal (`tty`, None = stream.isatty()) the line is rewritten in place and cleared by `close`; elsewhere (a
    log file, CI) a bar is written when it first appears, then at most once every `interval` seconds.
    """

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, interval: float = 30.0,
                 indent: str = "      "):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval, self.indent = interval, indent
        self._width, self._last_desc, self._last_time = 0, None, 0.0

    def write(self, text: str) -> int:
        for part in re.split(r"[\r\n]", text):
            part = part.strip()
            if BAR.search(part):
                self._show(part)
        return len(text)

    def _show(self, bar: str) -> None:
        line = self.indent + bar
        if self.tty:
            import shutil
            line = line[: shutil.get_terminal_size().columns - 1]
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            return
        desc, now = bar.split(":")[0], time.monotonic()
        if desc != self._last_desc or now - self._last_time >= self.interval:
            self.stream.write(line + "\n")
            self._last_desc, self._last_time = desc, now

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        """Clear the line (on a terminal), so the next message starts on a clean line."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width, self._last_desc = 0, None


class Interrupted(Exception):
    """Ctrl-C while a notebook ran; the partial executed copy is kept as <name>.interrupted.ipynb."""

    def __init__(self, notebook: str):
        self.notebook = notebook
        super().__init__(f"interrupted in {notebook}; finished runs are kept; run the same command again to continue")


def execute_one(nb: Path, out_dir: Path, parameters: dict[str, Any], kernel: str,
                progress: ProgressLine | None = None) -> Path:
    """Execute notebook `nb` with papermill into `out_dir/<name>`, atomically; returns that path.

    papermill writes `<stem>.running.ipynb`, which replaces the last good executed copy only once it finished. A failed
    run is kept as `<stem>.failed.ipynb`, an interrupted one as `<stem>.interrupted.ipynb` (each marked as such inside);
    a finished run removes the older ones. The kernel starts in the repository root.

    Raises Interrupted: Ctrl-C while the notebook ran.
    Raises Exception: any other error of the run (e.g. papermill's PapermillExecutionError for a failing cell),
    re-raised after the partial copy is kept as `<stem>.failed.ipynb`.
    """
    import papermill as pm
    final, running = out_dir / nb.name, out_dir / f"{nb.stem}.running.ipynb"
    try:
        pm.execute_notebook(str(nb), str(running), parameters=parameters, kernel_name=kernel, cwd=str(REPO_ROOT),
                            progress_bar=False, extra_arguments=KERNEL_ARGS, stdout_file=progress,
                            stderr_file=progress)
    except KeyboardInterrupt:
        _keep_unfinished(running, out_dir / f"{nb.stem}.interrupted.ipynb", "interrupted")
        raise Interrupted(nb.stem) from None
    except BaseException:
        _keep_unfinished(running, out_dir / f"{nb.stem}.failed.ipynb", "failed")
        raise
    finally:
        if progress is not None:
            progress.close()
    os.replace(running, final)
    for status in UNFINISHED:
        (out_dir / f"{nb.stem}.{status}.ipynb").unlink(missing_ok=True)  # superseded by the finished copy
    return final


KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]  # ipykernel's own log (its TCP warning, its errors while the client
# goes away on Ctrl-C) is not for the user; errors in cells still reach the executed notebook and the exit message


def _keep_unfinished(running: Path, target: Path, status: str) -> None:
    """Move a partial executed notebook to `target`, with pocl.status and a first cell saying it did not finish."""
    import nbformat
    if not running.exists():
        return
    try:
        nb = nbformat.read(running, as_version=4)
        nb.metadata["pocl"] = {"status": status}
        what = {"failed": "failed", "interrupted": "was interrupted"}[status]
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"**This run {what}; the notebook did not finish.** "
                                                         f"Its outputs stop where it stopped."))
        nbformat.write(nb, running)
    except Exception:  # noqa: BLE001 - a half-written file is still worth keeping under its telling name
        pass
    os.replace(running, target)


def run_collection(profile: str, *, notebooks: list[Path] | None = None, out_dir: Path | None = None,
                   extra: dict[str, Any] | None = None, log=print,
                   progress: ProgressLine | None = None) -> dict[str, float]:
    """Execute each notebook with `profile` (a name or a config file's path) and the `extra` parameters it has, in
    order; returns the merged timings.json (`merge_timings`) of `out_dir` (None = <runs root>/<profile>/notebooks).

    Every notebook must have `profile`; an extra parameter must exist in at least one notebook and have the type of its
    default (checked before anything runs). Kernels start in the repository root, so they import this checkout's
    pocl_utils. The error of a failing notebook propagates (see `execute_one`).

    Raises ConfigError: an unknown profile, a bad extra parameter (`check_extra`, `check_parameters`), or no Jupyter
    kernel that runs this interpreter (`kernel_name`).
    Raises Interrupted: Ctrl-C while a notebook ran (the message names it).
    """
    name = profile_name(profile)
    extra = dict(extra or {})
    check_extra(profile, extra)
    notebooks = notebooks or collection(profile=profile)
    out_dir = Path(out_dir or RUNS_ROOT / name / "notebooks")
    valid = {nb: notebook_parameters(nb) for nb in notebooks}
    for key in extra:
        if not any(key in v for v in valid.values()):
            names = sorted({k for v in valid.values() for k in v})
            raise ConfigError(f"unknown parameter {key!r} (in no notebook); valid parameters: {', '.join(names)}")
    params = {nb: {**{k: v for k, v in extra.items() if k in valid[nb]}, "profile": profile} for nb in notebooks}
    for nb in notebooks:
        check_parameters(nb, params[nb])  # every notebook must take `profile`; values must have the defaults' types
    kernel = kernel_name()
    out_dir.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.time()
    for k, nb in enumerate(notebooks, 1):
        log(f"[{k}/{len(notebooks)}] {nb.name} (profile={name})")
        t0 = time.time()
        try:
            execute_one(nb, out_dir, params[nb], kernel, progress)
        except KeyboardInterrupt:  # outside papermill's call, e.g. while it shut the kernel down
            raise Interrupted(nb.stem) from None
        times[nb.name] = round(time.time() - t0, 1)
        log(f"      done in {times[nb.name]:.0f}s")
    total = round(time.time() - t_all, 1)
    whole = set(notebooks) >= set(collection(profile=profile))
    merged = merge_timings(out_dir / "timings.json", times, total, whole=whole)
    log(f"collection finished in {total / 60:.1f} min; executed notebooks in {out_dir}")
    return merged


def merge_timings(path: Path, times: dict[str, float], total: float, *, whole: bool) -> dict[str, float]:
    """Update the notebooks' entries of timings.json (missing or invalid = empty), keeping the others; returns the
    merged timings as written: seconds per notebook file name and "total", which is this run's wall seconds when it
    ran the whole collection, else the sum of the latest per-notebook times.
    """
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        old = {}
    merged = {**(old if isinstance(old, dict) else {}), **times}
    merged["total"] = total if whole else round(sum(v for k, v in merged.items() if k != "total"), 1)
    atomic_write_json(path, merged)
    return merged


EPILOG = f"""examples:
  pocl-reproduce --profile smoke                          the whole collection, about 2 min
  pocl-reproduce --profile laptop --only 03 10            two notebooks (their timings are merged into timings.json)
  pocl-reproduce --profile smoke {OVERRIDES_EXAMPLE}     a profile override (a JSON object)
  pocl-reproduce --lab                                    the student lab (11) alone, headless, on classroom
  pocl-reproduce --lab solutions                          the lab with every exercise solved: the expected outputs
  pocl-reproduce --config my_pocl.yaml                    your own models and data (README; --help-profile: the keys)

where things go:
  executed notebooks   <runs root>/<profile>/notebooks/ (runs root: --runs-root, else $POCL_RUNS_DIR, else ./runs);
                       a failed or interrupted notebook is kept beside the last good one as <name>.failed.ipynb or
                       <name>.interrupted.ipynb
  executed lab         <runs root>/<profile>/lab/ (11_lab.ipynb or 11_lab_solutions.ipynb)
  prepared steps, runs <runs root>/<profile>/ (finished runs are kept: a re-run continues where it stopped)
  tables, figures      results/<profile>/ and figures/<profile>/ under $POCL_OUTPUT_DIR, else the runs root
  reference results    the committed results/<profile>/ and figures/<profile>/ of the repository; only a
                       maintainer's --publish changes them (it copies a finished run there, its executed notebooks
                       into results/<profile>/notebooks/; their other files and subfolders are kept)
"""


def _quiet_libraries() -> None:
    """Keep papermill's (and nbclient's, which logs through it) and asyncio's log records off the terminal.

    The command's own one-line messages say what happened. Without this, a Ctrl-C could add the lines those libraries
    log while papermill shuts the kernel down ("Kernel died while waiting for execute reply.", an unretrieved task's
    DeadKernelError), depending on which of them ran first.
    """
    for name in ("papermill", "asyncio"):
        logging.getLogger(name).addHandler(logging.NullHandler())


def main(argv: list[str] | None = None) -> int:
    """The `pocl-reproduce` command line: execute the collection for one profile, or publish a finished run.

    See `pocl-reproduce --help` for the options and where things go (EPILOG). Errors are printed on stderr.

    `argv`: the arguments after the program's name; None = sys.argv[1:].
    Returns the exit status: 0 on success; 1 when a notebook failed or `--publish` was refused; 2 for a configuration
    error (ConfigError: a bad profile or parameter, no usable kernel); 130 when interrupted.
    """
    ap = argparse.ArgumentParser(prog="pocl-reproduce", description=__doc__.splitlines()[0], epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--profile", default=None,
                       help=f"one of: {', '.join(PROFILES)} (default laptop; classroom with --lab)")
    which.add_argument("--config", default=None, metavar="FILE", type=Path,
                       help="a YAML or JSON config file: your own models and data; runs " + ", ".join(FILES_NOTEBOOKS))
    ap.add_argument("--help-profile", action="store_true", help="describe every profile key (of a config file, or of "
                                                                "-p overrides) and exit")
    ap.add_argument("--only", nargs="*", default=None,
                    help="notebook name prefixes to run, e.g. 00 01; a prefix that matches none is refused")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "JSON_VALUE"),
                    help="extra notebook parameter, value parsed as JSON when possible, e.g. " + OVERRIDES_EXAMPLE)
    ap.add_argument("--runs-root", default=None, type=Path,
                    help="folder for prepared steps, runs and executed notebooks (sets POCL_RUNS_DIR for the kernels; "
                         "default $POCL_RUNS_DIR, else ./runs)")
    ap.add_argument("--lab", nargs="?", const="student", default=None, choices=LAB_VARIANTS,
                    help="run the lab (notebook 11) alone, headless, into <runs root>/<profile>/lab/: 'student' "
                         "(default) as a student meets it (each check says 'not implemented yet'; the closing "
                         "experiment uses pocl_utils's pieces), 'solutions' with every exercise solved")
    ap.add_argument("--publish", action="store_true",
                    help="for maintainers; run nothing: copy this profile's finished run into the committed "
                         "results/<profile>/ and figures/<profile>/, its executed notebooks (and the lab's solutions, "
                         "if run) into results/<profile>/notebooks/ (refused if a notebook has not finished, a table "
                         "is missing or the notebooks exceed 10 MB)")
    args = ap.parse_args(argv)
    if args.help_profile:
        print(profile_help())
        return 0
    args.profile = args.profile or ("classroom" if args.lab else "laptop")
    _quiet_libraries()
    profile = str(args.config.resolve()) if args.config else args.profile  # the notebooks' `profile` parameter
    try:
        name = profile_name(profile)
    except ConfigError as e:
        print(f"pocl-reproduce: {e}", file=sys.stderr)
        return 2
    root, kwargs = RUNS_ROOT, {}
    if args.runs_root:
        root = args.runs_root.resolve()
        os.environ["POCL_RUNS_DIR"] = str(root)  # the kernels inherit it (workspace.RUNS_ROOT)
        kwargs["out_dir"] = root / name / "notebooks"
    notebooks = collection(profile=profile)
    if args.publish:
        return _publish(profile, notebooks, root / name / "notebooks")
    extra = {k: _parse(v) for k, v in args.param}
    try:
        if args.lab and args.only:
            raise ConfigError("--lab runs the lab alone; run the collection's notebooks (--only) in another command")
        if args.only:
            notebooks = select(notebooks, args.only, name)
        check_extra(profile, extra)  # before the lab notebook is written
        if args.lab:
            folder = root / name / "lab"
            notebooks, kwargs["out_dir"] = [lab_notebook(args.lab, folder)], folder
        progress = ProgressLine(sys.stdout)
        run_collection(profile, notebooks=notebooks, extra=extra, progress=progress, **kwargs)
        where_outputs(name)
    except ConfigError as e:
        print(f"pocl-reproduce: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"pocl-reproduce: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the first notebook started
        print("pocl-reproduce: interrupted before any notebook ran", file=sys.stderr)
        return 130
    except Exception as e:  # papermill's PapermillExecutionError carries the failing cell's error name and value
        where = kwargs.get("out_dir", root / name / "notebooks")
        if hasattr(e, "ename"):
            print(f"pocl-reproduce: {e.ename}: {e.evalue} (executed notebook in {where}, as <name>.failed.ipynb)",
                  file=sys.stderr)
        else:
            print(f"pocl-reproduce: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def where_outputs(profile: str, log=print) -> None:
    """Say where this run's tables and figures are, whether its scores equal the committed reference's
    (`reference.compare_runs`, when both have a runs.csv), and how to compare the tables with it.

    Names only folders that exist: the comparison lines only when the repository holds a reference for the profile.
    """
    run = output_root() / "results" / profile
    found = [f"{what} in {_short(folder)}/" for what, folder in (("tables", run),
                                                                 ("figures", output_root() / "figures" / profile))
             if folder.is_dir() and any(folder.iterdir())]
    if found:
        log(", ".join(found))
    ref = REPO_ROOT / "results" / profile
    if ref.is_dir() and run.is_dir():
        if (ref / "runs.csv").exists() and (run / "runs.csv").exists():
            from ..analysis.reference import compare_runs, comparison_line
            try:
                log(comparison_line(compare_runs(run, ref)))
            except ValueError as e:  # an unreadable runs.csv (pandas errors are ValueErrors) must not fail a run
                log(f"scores not compared with the committed reference: {e}")
        log(f"compare with the committed reference: diff -q {_short(ref)} {_short(run)}")


def _short(path: Path) -> str:
    """`path` relative to the working directory when it lies under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _publish(profile: str, notebooks: list[Path], executed: Path) -> int:
    try:
        if profile not in PROFILES:
            raise ConfigError(f"--publish takes a built-in profile ({', '.join(PROFILES)}); a config file's results "
                              f"are not a committed reference")
        publish(profile, notebooks, executed, output_root())
    except (ConfigError, PublishError) as e:
        print(f"pocl-reproduce: {e}", file=sys.stderr)
        return 1
    return 0


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


if __name__ == "__main__":
    raise SystemExit(main())
