"""A real browser runs a notebook in JupyterLab: headless Chromium (Debian's `chromium` + `chromedriver`, driven by
Selenium) opens a notebook on the `smoke` profile, runs all cells from the Run menu, and the test checks that no
error was shown and that the figures were drawn. A screenshot goes to `runs/smoke/browser/<notebook>.png`.

Nothing is downloaded at run time: the browser and its driver come from apt, and Selenium is handed the driver's
path, so Selenium Manager is never asked for one. Locally a missing browser skips; in CI (CI=true) it fails.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nbformat
import pytest

from conftest import REPO, require
from pocl_utils.experiment.config import get_profile
from pocl_utils.experiment.workspace import RUNS_ROOT, workspace_root
from pocl_utils.notebook.reproduce import NOTEBOOK_DIR, kernel_name

NOTEBOOK = "00_data.ipynb"  # shows two figures within seconds on `smoke`
PROFILE = "smoke"
SERVER_TIMEOUT_S = 60  # until the server answers /api/status
KERNEL_TIMEOUT_S = 90  # until the page has loaded and the kernel is idle
RUN_TIMEOUT_S = 150  # until every cell has run (about 20 s on 2 busy cores)
WINDOW = (1280, 1024)  # initial size; grown to the notebook's full height for the screenshot
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--lang=en-US")

# JupyterLab renders an exception as `application/vnd.jupyter.stderr`, like a warning on stderr; the text tells them
# apart: IPython's traceback header, or a last line "SomeError: message" (IPython's last traceback line, and all of
# our one-line user errors). A warning ends with the source line that raised it.
TRACEBACK_HEADER = "Traceback (most recent call last)"
ERROR_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Iteration)(:.*)?")


# Lab settings for a quiet, fully rendered page: no news or update pop-ups; every cell kept in the DOM (the default
# windowing mode virtualises off-screen cells, which would hide their prompts and images from the checks).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

# The page's state in one round trip: code-cell prompts ("[3]:", "[*]:", "[ ]:"), the kernel status, stderr-like
# outputs and rendered images.
PAGE_STATE_JS = """
const panel = document.querySelector('.jp-NotebookPanel');
if (!panel) return null;
const q = (sel) => Array.from(panel.querySelectorAll(sel));
const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
return {
  prompts: q('.jp-CodeCell .jp-InputArea-prompt').map(e => e.textContent.trim()),
  status: indicator ? indicator.dataset.status : null,
  stderr: q('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').map(e => e.innerText),
  images: q('.jp-OutputArea-output img').map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
};
"""


# ---- the pieces: tools, notebook, server, browser -----------------------------------------------------------------


def _tools() -> tuple[str, str]:
    """Debian's chromium and chromedriver, and the selenium package; skips locally, fails in CI."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        require("headless browser test needs Debian's chromium and chromedriver "
                "(apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        require("headless browser test needs the selenium package (pip install -e '.[test]')")
    return chromium, driver


def _prepare_notebook(src: Path, folder: Path, kernel: str) -> Path:
    """A copy of `src` with `profile` injected by papermill (not executed) and the given kernel in its metadata."""
    import papermill as pm
    from jupyter_client.kernelspec import KernelSpecManager
    dst = folder / src.name
    pm.execute_notebook(str(src), str(dst), parameters={"profile": PROFILE}, prepare_only=True,
                        kernel_name=kernel, progress_bar=False, log_output=False)
    notebook = nbformat.read(dst, as_version=4)
    spec = KernelSpecManager().get_kernel_spec(kernel)
    notebook.metadata["kernelspec"] = {"name": kernel, "display_name": spec.display_name,
                                       "language": spec.language}
    nbformat.write(notebook, dst)
    return dst


def _tail(path: Path, n: int = 30) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-n:])


@dataclass
class Lab:
    """A running JupyterLab server on a loopback port (0 until the server has reported it)."""
    proc: subprocess.Popen
    port: int
    token: str
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def kernel_ready(self) -> bool:
        """One kernel, idle, with the page connected to it (the page's own indicator reads idle before that)."""
        kernels = self.api("/api/kernels")
        return len(kernels) == 1 and kernels[0]["execution_state"] == "idle" and kernels[0]["connections"] > 0

    def stop(self) -> None:
        """Ask the server to shut down (it stops its kernels), then terminate and kill its process group."""
        if self.proc.poll() is None and self.port:
            try:
                self.api("/api/shutdown", "POST")
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                pass


def _server_env(folder: Path) -> dict[str, str]:
    """The kernel inherits this: same run folder as the test, outputs kept out of the tracked tree, and Jupyter's
    user config, runtime files and lab settings in `folder` so nothing from the user's home changes the page."""
    env = dict(os.environ, POCL_RUNS_DIR=str(RUNS_ROOT), POCL_OUTPUT_DIR=str(folder / "out"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               JUPYTER_CONFIG_DIR=str(folder / "config"), JUPYTER_RUNTIME_DIR=str(folder / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(folder / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(folder / "workspaces"))
    (folder / "data").mkdir(exist_ok=True)  # NotebookNotary.data_dir (see start_lab)
    for name, values in LAB_SETTINGS.items():
        path = folder / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return env


def start_lab(folder: Path) -> Lab:
    """`jupyter lab` of this interpreter serving `folder` on loopback with a random token. Port 0 lets the system pick
    a free port (no race with other processes); the server writes the one it got to its runtime folder."""
    token, log = secrets.token_hex(16), folder / "server.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", "--port=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
           "--allow-root",  # CI runs as root; the flag changes nothing for other users
           # nothing that reaches out: no news feed, no update check, no extension listing from PyPI
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly",
           # the notebook-trust database and key stay in the scratch folder instead of the user's data folder
           f"--NotebookNotary.data_dir={folder / 'data'}"]
    with open(log, "wb") as out:  # the child keeps its own handle
        proc = subprocess.Popen(cmd, cwd=folder, env=_server_env(folder), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    lab = Lab(proc, 0, token, log)
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while not _answers(lab, folder / "runtime"):
            assert proc.poll() is None, f"jupyter lab exited with {proc.returncode}:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"jupyter lab did not answer in {SERVER_TIMEOUT_S}s:\n{_tail(log)}"
            time.sleep(0.5)
        return lab
    except BaseException:
        lab.stop()
        raise


def _answers(lab: Lab, runtime: Path) -> bool:
    """Once the server has written its port (jpserver-<pid>.json), whether /api/status answers."""
    if not lab.port:
        info = sorted(runtime.glob("jpserver-*.json"))
        if not info:
            return False
        try:
            lab.port = int(json.loads(info[0].read_text())["port"])
        except (ValueError, KeyError):  # caught mid-write
            return False
    try:
        lab.api("/api/status")
        return True
    except OSError:
        return False


def start_chromium(chromium: str, driver: str, folder: Path):
    """Headless Chromium under Debian's chromedriver, with a fresh profile and no background network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={folder / 'chromium-profile'}",
                                  f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    # an explicit driver path means Selenium Manager is never run, so it downloads nothing
    service = Service(executable_path=driver, log_output=str(folder / "chromedriver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    browser.set_page_load_timeout(KERNEL_TIMEOUT_S)
    return browser


# ---- fixtures: each stops what it started, even when the test fails ------------------------------------------------


@pytest.fixture(scope="session")
def tools() -> tuple[str, str]:
    """(chromium, chromedriver); checked before anything is started or written."""
    return _tools()


@pytest.fixture
def run_folder(tools) -> Path:
    """runs/smoke/browser/ ($POCL_RUNS_DIR honoured), with a scratch folder for this notebook, emptied first."""
    folder = workspace_root(get_profile(PROFILE)) / "browser"
    shutil.rmtree(_scratch(folder), ignore_errors=True)
    _scratch(folder).mkdir(parents=True)
    return folder


def _scratch(run_folder: Path) -> Path:
    return run_folder / f"lab-{Path(NOTEBOOK).stem}"


@pytest.fixture
def lab(run_folder) -> Lab:
    _prepare_notebook(NOTEBOOK_DIR / NOTEBOOK, _scratch(run_folder), kernel_name())
    server = start_lab(_scratch(run_folder))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(lab, tools):
    chrome = start_chromium(*tools, lab.log.parent)
    try:
        yield chrome
    finally:
        chrome.quit()


# ---- driving the page ----------------------------------------------------------------------------------------------


def _state(browser) -> dict | None:
    return browser.execute_script(PAGE_STATE_JS)


def _poll(lab: Lab, probe: Callable[[], Any], timeout: float, what: str,
          detail: Callable[[], str] = lambda: "") -> Any:
    """Call `probe()` every half second until it returns something other than None, and return that; a timeout fails
    with `what`, `detail()` and the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail()}\nserver log:\n{_tail(lab.log)}")


def _wait(browser, lab: Lab, done: Callable[[dict], bool], timeout: float, what: str) -> dict:
    """Poll the page state until `done(state)`; a timeout fails with the last state and the server's log."""
    last: dict = {}

    def probe() -> dict | None:
        state = last["state"] = _state(browser)
        return state if state is not None and done(state) else None

    return _poll(lab, probe, timeout, what, lambda: f"; page state {last.get('state')}")


def click_menu(browser, menu: str, item: str) -> None:
    """Open `menu` in the menu bar and click `item` in it, as a user would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    bar = [e for e in browser.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if e.text.strip() == menu]
    assert bar, f"no {menu!r} menu in the menu bar"
    bar[0].click()

    def entry(driver):
        found = [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-item .lm-Menu-itemLabel")
                 if e.text.strip() == item and e.is_displayed()]
        return found[0] if found else False

    WebDriverWait(browser, 10).until(entry, f"no {item!r} in the {menu!r} menu").click()


def errors_shown(state: dict) -> list[str]:
    """The stderr-like outputs on the page that are exceptions, not warnings."""
    def is_error(text: str) -> bool:
        lines = [line for line in text.splitlines() if line.strip()]
        return TRACEBACK_HEADER in text or bool(lines and ERROR_LINE.fullmatch(lines[-1].strip()))
    return [text for text in state["stderr"] if is_error(text)]


def finished(state: dict) -> bool:
    """Run All queues every cell at once ("[*]:"), so the run is over when the kernel is idle, nothing is queued and
    some cell has a count (an error aborts the rest, which go back to "[ ]:")."""
    running = any(p.startswith("[*]") for p in state["prompts"])
    counted = any(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"])
    return state["status"] == "idle" and not running and counted


def screenshot(browser, path: Path) -> None:
    """Grow the window to the notebook's full height (the lab page itself never scrolls), then capture it."""
    extra = browser.execute_script(
        "const s = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');"
        "return s ? s.scrollHeight - s.clientHeight : 0;")
    browser.set_window_size(WINDOW[0], min(WINDOW[1] + int(extra) + 40, 8000))
    time.sleep(1.0)  # let the layout settle at the new size
    browser.execute_script("const s = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');"
                           "if (s) s.scrollTop = 0;")  # Run All left it scrolled to the last cell
    time.sleep(0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(path)), f"could not save a screenshot to {path}"


def _saved_notebook(path: Path, since_ns: int) -> nbformat.NotebookNode | None:
    """The notebook at `path` once a save after `since_ns` has finished, else None. The server writes in place, so a
    file caught mid-write is empty or cut short: it does not parse until the write is done."""
    if path.stat().st_mtime_ns == since_ns:
        return None
    try:
        return nbformat.read(path, as_version=4)
    except (nbformat.reader.NotJSONError, ValueError):
        return None


def _wait_saved(lab: Lab, path: Path, since_ns: int, timeout: float) -> nbformat.NotebookNode:
    """Poll until a save after `since_ns` has finished writing `path`; return the notebook it wrote."""
    return _poll(lab, lambda: _saved_notebook(path, since_ns), timeout, f"{path.name} to be saved")


def _saved_outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]


def _run_all_and_check(browser, lab: Lab, path: Path, n_code: int) -> None:
    """Open the notebook, run all cells from the Run menu, check the page and then the notebook the lab saves."""
    browser.get(f"{lab.base}/lab/tree/{path.name}?token={lab.token}")
    _wait(browser, lab, lambda s: len(s["prompts"]) == n_code and s["status"] == "idle" and lab.kernel_ready(),
          KERNEL_TIMEOUT_S, "the notebook to load with an idle kernel")
    sessions = lab.api("/api/sessions")
    assert [s["kernel"]["name"] for s in sessions] == [kernel_name()]  # the kernel that runs this interpreter

    click_menu(browser, "Run", "Run All Cells")
    state = _wait(browser, lab, finished, RUN_TIMEOUT_S, "all cells to run")
    assert errors_shown(state) == [], "the notebook showed an error"
    assert all(re.fullmatch(rf"\[{k}\]:", p) for k, p in enumerate(state["prompts"], 1)), state["prompts"]
    drawn = [img for img in state["images"] if img[0] and img[1] > 0 and img[2] > 0]
    assert drawn and len(drawn) == len(state["images"]), f"figures not rendered: {state['images']}"

    # what the kernel sent, as the lab saves it: no error output, and one PNG for each image on the page
    mtime = path.stat().st_mtime_ns
    click_menu(browser, "File", "Save Notebook")
    outputs = _saved_outputs(_wait_saved(lab, path, mtime, 30))
    assert [o for o in outputs if o.output_type == "error"] == []
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(drawn)


# ---- the test ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.notebooks
def test_notebook_runs_in_jupyterlab_in_a_real_browser(lab, browser, run_folder):
    path = lab.log.parent / NOTEBOOK
    n_code = sum(c.cell_type == "code" for c in nbformat.read(path, as_version=4).cells)
    shot = run_folder / f"{Path(NOTEBOOK).stem}.png"
    failed_shot = shot.with_name(f"{shot.stem}-failed.png")
    shot.unlink(missing_ok=True)
    failed_shot.unlink(missing_ok=True)
    try:
        _run_all_and_check(browser, lab, path, n_code)
    except BaseException:
        try:  # a picture of the failure helps in CI; never hide the real error behind a failed screenshot
            screenshot(browser, failed_shot)
        except Exception:
            pass
        raise
    screenshot(browser, shot)
    assert shot.stat().st_size > 10_000
