# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Both create .venv when it is missing (Python >= 3.11 as `python3`, or PYTHON=...).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false

.PHONY: run test test-slow test-browser venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: mmvsd needs Python >= 3.11; run make PYTHON=python3.11 ...")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps lmms-eval==0.7.3
	touch $@

# The main job, on the toy world: benchmark the shipped toy-s target with its shipped MSD drafter
# against toy-s alone, on fresh toy images, trees sized by tree=auto (its first run on a machine
# measures the costs once, in seconds). Nothing is built or trained on this path.
run: venv
	$(PY) -m mmvsd.bench target=toy-s drafter=toy-s-msd max_new_tokens=96 json=runs/bench.json

# Fast tests (pytest exit code 5, "no tests collected", counts as success).
test: venv
	$(PY) -m pytest -q; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-slow: venv
	$(PY) -m pytest -q -m slow; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# The demo in a real headless browser: needs Debian's chromium (apt-get install chromium).
test-browser: venv
	$(PY) -m pytest -q -m browser; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

clean:
	rm -rf $(VENV) runs
