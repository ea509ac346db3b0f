.PHONY: demo test
# make demo PORT=8001 (or PMERGE_PORT=8001 make demo) when 8000 is taken
PORT ?=
# The first run installs into .venv: about 4 minutes and 6.4 GB here (torch 2.14.1 with its CUDA
# libraries, which a CPU-only machine installs too); pip shows its progress.
.venv/bin/pmerge: pyproject.toml
	python3.11 -m venv .venv
	.venv/bin/pip install --progress-bar on torch==2.14.1 torchvision==0.29.1
	.venv/bin/pip install --progress-bar on -e '.[dev]'
	touch .venv/bin/pmerge
demo: .venv/bin/pmerge
	.venv/bin/pmerge demo --dir runs/demo $(if $(PORT),--port $(PORT))
test: .venv/bin/pmerge
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python -m pytest
