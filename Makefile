# netlock.killswitch: every set-up step lives here, so that `make demo` and `make test` work
# from a fresh clone on Debian/Ubuntu as root.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
COLLECTIONS := $(CURDIR)/.collections
export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_FORCE_COLOR ?= 0
export PY_COLORS ?= 0
HOST_PACKAGES := nftables debootstrap docker.io iproute2 util-linux tcpdump python3-venv shellcheck git openssh-client chromium wireguard-go wireguard-tools iputils-ping openvpn
# Lab networks: name, IPv4 subnet, IPv6 subnet (checked by tools/labnet.py before creation).
DEFAULT_NET := ks-default --subnet 198.18.20.0/24 --subnet6 2001:db8:20::/64
TEMPLATE_NET := ks-template --subnet 198.18.60.0/24 --subnet6 2001:db8:60::/64

.PHONY: bench help host-deps venv collection engine image networks unit lint changelog sanity matrix molecule molecule-template build ee-context ee docs docs-test test demo demo-down clean

help:
	@echo "make demo       roll the kill switch out to the lab fleet and show traffic blocked"
	@echo "make demo-down  remove the lab"
	@echo "make test       unit tests, nft -c, lint, ansible-test sanity, molecule scenarios (default, leak, fleet, drift, template)"
	@echo "make changelog  regenerate CHANGELOG.md from changelogs/ (add a fragment in changelogs/fragments/ first)"
	@echo "make docs       build the documentation site into build/docs/html"
	@echo "make matrix     ansible-test sanity and units on every ansible-core/Python cell of the CI matrix (slow)"

host-deps:
	@missing=(); for pkg in $(HOST_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing+=($$pkg); done; \
	if (( $${#missing[@]} )); then \
	  echo "installing host packages: $${missing[*]}"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$${missing[@]}"; \
	fi

# The venv is rebuilt when the pinned toolchain changes.
$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: host-deps $(VENV)/.installed

# The repository root is the collection root: expose it as ansible_collections/netlock/killswitch.
collection:
	@mkdir -p $(COLLECTIONS)/ansible_collections/netlock
	@ln -sfn ../../.. $(COLLECTIONS)/ansible_collections/netlock/killswitch

engine: host-deps
	tools/docker-engine.sh

image: engine
	tools/build-image.sh | tail -n 1 > .cache-image-ref || (rm -f .cache-image-ref; exit 1)

networks: engine venv
	$(BIN)/python tools/labnet.py create $(DEFAULT_NET)
	$(BIN)/python tools/labnet.py create $(TEMPLATE_NET)

unit: venv collection
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit tools/test_labnet.py

lint: venv collection
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --profile production
	$(BIN)/antsibull-changelog lint
	$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
	$(BIN)/python tools/changelog.py --check
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml docs/ci/*.yml

# CHANGELOG.md is generated from changelogs/ (antsibull-changelog): add a fragment
# changelogs/fragments/<topic>.yml, then run this and commit both.
changelog: venv
	$(BIN)/antsibull-changelog lint
	$(BIN)/python tools/changelog.py

sanity: venv
	tools/sanity.sh

# The CI support matrix (.github/workflows/ci.yml, job ansible-test) on this machine: per ansible-core
# release line and Python (pyenv's, else on PATH), a venv under ~/.cache/netlock-killswitch/matrix with the newest ansible-core
# of that line, then ansible-test sanity and units as the workflow runs them. Slow: not part of `make test`.
# MATRIX_ARGS="--only 2.19/3.13 --no-sanity" runs a part; "--list" shows the cells.
matrix: venv
	$(BIN)/python tools/matrix.py $(MATRIX_ARGS)

# One scenario at a time: the leak and drift captures and fleet's lockout time bounds are measurements, and
# two labs on two cores starve them (a capture that drops packets is an error). About 45 min in all.
MOLECULE = NETLOCK_LAB_IMAGE=$$(cat .cache-image-ref) $(BIN)/molecule
# `template` is the scenario users copy (extensions/molecule/killswitch, the ansible-native layout: molecule
# finds it from extensions/), run against inventories/example so that it cannot rot.
MOLECULE_TEMPLATE = cd extensions && PYTEST_ADDOPTS="-p no:benchmark" KILLSWITCH_IMAGE=$$(cat ../.cache-image-ref) KILLSWITCH_NETWORK=ks-template \
	KILLSWITCH_INVENTORY=$(CURDIR)/inventories/example KILLSWITCH_GROUP=vpn_clients $(BIN)/molecule test -s killswitch
SCENARIOS := default leak fleet drift template
molecule: venv collection image networks
	set -e; for scenario in $(SCENARIOS); do \
	  if [ $$scenario = template ]; then ($(MOLECULE_TEMPLATE)); else $(MOLECULE) test -s $$scenario; fi; done

molecule-template: venv collection image networks
	$(MOLECULE_TEMPLATE)

build: venv
	$(BIN)/ansible-galaxy collection build --force --output-path dist .

# Execution environment (execution-environment.yml): `ee-context` writes the build context offline;
# `ee` builds the image, which needs a container registry (base image) and PyPI.
EE_RUNTIME ?= docker
ee-context: build
	$(BIN)/ansible-builder create -f execution-environment.yml -c dist/ee-context --output-filename Containerfile

ee: build
	$(BIN)/ansible-builder build -f execution-environment.yml -c dist/ee-context --container-runtime $(EE_RUNTIME)

# The documentation site, offline, into build/docs/html (tools/docs.py): antsibull-docs pages of every
# module, filter and role from their own documentation, and README.md, the role's README and docs/**/*.md
# as guide pages.
docs: venv collection
	$(BIN)/python tools/docs.py

# The site as users read it: its pages opened in headless Chromium (tests/docs/test_site.py).
docs-test: host-deps docs
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/docs

test: unit lint sanity build docs-test molecule

# The main job: build the lab fleet, roll the kill switch out, run every leak case and the flap
# stream, print the report and write reports/leak-report.json and reports/leak-timeline.png.
demo: venv collection image
	NETLOCK_LAB_IMAGE=$$(cat .cache-image-ref) $(BIN)/python -m lab demo

demo-down: venv
	@if docker info >/dev/null 2>&1; then $(BIN)/python -m lab down; fi

clean: demo-down
	rm -rf $(VENV) $(COLLECTIONS) dist build tests/output .cache-image-ref

# The benchmark suite (issue 12, bench/run.py): writes bench/results.json and bench/results.md. As root (network
# namespaces); about 20 min on 2 cores. BENCH_ONLY=B3,B7 runs a subset. Not part of `make test`.
bench: venv collection
	$(BIN)/python -m bench
