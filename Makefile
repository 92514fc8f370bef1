# The two commands of the README. Both set up .venv first (scripts/install.sh; cheap when already done).
PY := .venv/bin/python

.PHONY: install demo test lint

install:
	bash scripts/install.sh

# the whole pipeline on the embedded default: sample corpus, tokenizer, chunks, pretraining, resume, export, text
demo: install
	bash scripts/quickstart.sh

# lint + the test suite (GPU tests are skipped without a GPU)
test: install lint
	$(PY) -m pytest tests -q

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
