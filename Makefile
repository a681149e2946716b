# Entry points. `make run` and `make test` set everything up themselves (idempotently).
# Every target calls the project's one CLI (`greenr`, see `greenr --help`) or a tool it pins.
.DEFAULT_GOAL := help
export DATA_SOURCE
# scripts/setup.sh reads PYTHON (the interpreter: PYTHON=python3.12 make run) and UV_PROJECT_ENVIRONMENT
# (uv's own variable for the venv folder, e.g. .venv-3.12 beside .venv) from the environment or the
# command line (make passes both on); every target runs that venv.
VENV := $(or $(UV_PROJECT_ENVIRONMENT),.venv)/bin

.PHONY: help setup test-tools run test test-fast lint serve store-start store-stop mlflow-ui bench bench-scale

help:
	@echo "make setup        create/refresh .venv from uv.lock (idempotent; PYTHON=python3.12 picks the interpreter)"
	@echo "make run          the main job: object store, data, dvc repro, dvc push, test metrics"
	@echo "                  (DATA_SOURCE=DIR make run ingests from a local folder; FORCE=1 reruns every stage)"
	@echo "make test         the whole test suite (installs chromium, prometheus, hey, wrk and Airflow if missing)"
	@echo "make test-fast    the tests without the end-to-end ones (installs the same tools as make test)"
	@echo "make lint         ruff check, ruff format --check, mypy on greenr/ and serve/"
	@echo "make serve        the prediction server on http://127.0.0.1:8000 (greenr serve)"
	@echo "make store-start  start the local MinIO-compatible object store (make store-stop stops it)"
	@echo "make mlflow-ui    the MLflow UI on http://127.0.0.1:5000"
	@echo "make bench        the training-throughput benchmark"
	@echo "make bench-scale N=20000  the pipeline on N images made from the photos (UNTIL=prepare stops there)"

setup:
	@scripts/setup.sh

test-tools: setup
	@scripts/setup-test-tools.sh
	@deploy/airflow/setup.sh

run: setup
	$(VENV)/greenr run $(if $(FORCE),--force)

test: setup test-tools
	$(VENV)/pytest

test-fast: setup test-tools
	$(VENV)/pytest -m "not e2e and not real_data"

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

serve: setup
	$(VENV)/greenr serve

store-start: setup
	$(VENV)/greenr store start

store-stop: setup
	$(VENV)/greenr store stop

mlflow-ui: setup
	$(VENV)/greenr mlflow-ui

bench: setup
	$(VENV)/python bench/train_throughput.py --data $${DATA:-../shared/datasets/dandelion-grass}

bench-scale: setup
	$(VENV)/python bench/scale.py $${N:-2000} --until $${UNTIL:-export}
