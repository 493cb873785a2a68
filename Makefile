# Literate: every target installs what it needs itself (apt packages as root, a .venv, pinned pip packages).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The PyTorch build: the CPU wheel by default. On a GPU cluster pick the CUDA build, e.g.
#   make setup TORCH="torch==2.13.0" TORCH_INDEX="--index-url <your CUDA wheel index>"
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
DEEPSPEED ?= deepspeed==0.19.8
APT_PACKAGES ?= fonts-dejavu-core fonts-liberation2 fonts-urw-base35 fonts-freefont-ttf wamerican fonts-noto-color-emoji fonts-noto-cjk tesseract-ocr tesseract-ocr-eng libreoffice-impress-nogui libreoffice-writer-nogui texlive-latex-base latexml pandoc chromium bubblewrap curl openssh-server openssh-client pdsh slurm-wlm munge
# `make fonts`: 60 more Debian font packages (~130 families) for the reading recipe's many-font stages (the synthetic
# source draws from every font under /usr/share/fonts; benchmarks/results/learning.md, row m1). Not needed by the
# tests or the demo.
FONT_PACKAGES ?= fonts-adf-accanthis fonts-adf-baskervald fonts-adf-berenis fonts-adf-gillius fonts-adf-ikarius fonts-adf-irianis fonts-adf-libris fonts-adf-mekanus fonts-adf-oldania fonts-adf-romande fonts-adf-switzera fonts-adf-tribun fonts-adf-universalis fonts-adf-verana fonts-cardo fonts-clear-sans fonts-comic-neue fonts-cabin fonts-cantarell fonts-courier-prime fonts-crosextra-caladea fonts-crosextra-carlito fonts-croscore fonts-ebgaramond fonts-fanwood fonts-go fonts-goudybookletter fonts-hack-ttf fonts-inconsolata fonts-inter fonts-jetbrains-mono fonts-junction fonts-karla fonts-lato fonts-linuxlibertine fonts-manrope fonts-noto-core fonts-oldstandard fonts-open-sans fonts-paratype fonts-quattrocento fonts-roboto-unhinted fonts-roboto-slab fonts-sora fonts-stix fonts-texgyre fonts-vollkorn fonts-cmu fonts-anonymous-pro fonts-b612 fonts-dosis fonts-league-spartan fonts-mononoki fonts-tuffy fonts-play fonts-oxygen fonts-opendin fonts-century-catalogue fonts-prociono fonts-averia-serif-gwf fonts-elstob
PYTEST_ARGS ?=
# make demo DEMO_ARGS="--layout-steps 600 --mixed-steps 400" trains longer
DEMO_ARGS ?=
STAMP := $(VENV)/.literate-setup

.PHONY: setup apt fonts test test-fast lint format demo clean bench

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml Makefile
	@$(MAKE) --no-print-directory apt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_INDEX) "$(TORCH)"
	$(PIP) install -q -r requirements.txt
	# DeepSpeed builds against the torch installed above (its setup imports torch): no build isolation.
	$(PIP) install -q --no-build-isolation "$(DEEPSPEED)"
	@touch $(STAMP)

# Debian/Ubuntu packages; installed only when missing, and only when we are root.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run 'sudo make apt')"; exit 1; fi; \
	fi

fonts:
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(FONT_PACKAGES)"

test: setup
	DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu} $(PY) -m pytest -q $(PYTEST_ARGS)

# The tests without the `slow` mark (the end-to-end runs of minutes): for development; CI runs `make test`.
test-fast: setup
	DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu} $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) -m benchmarks.processor
	$(PY) -m benchmarks.train_step

demo: setup
	DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu} $(PY) -m train.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
