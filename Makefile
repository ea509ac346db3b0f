.PHONY: demo test
.venv/bin/pmerge: pyproject.toml
	python3.11 -m venv .venv
	.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	.venv/bin/pip install -q -e '.[dev]'
	touch .venv/bin/pmerge
demo: .venv/bin/pmerge
	.venv/bin/pmerge demo --dir runs/demo
test: .venv/bin/pmerge
	.venv/bin/python -m pytest
