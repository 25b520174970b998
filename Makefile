# The two commands of the README: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# Every target runs with the project's Node first on PATH (installed by `setup` when needed).
export PATH := $(ROOT)/.tools/node/bin:$(ROOT)/node_modules/.bin:$(PATH)

.PHONY: setup run test typecheck bench clean db-stop

setup: .tools/node/bin/node node_modules/.sluice-installed

.tools/node/bin/node:
	@bash scripts/setup-node.sh

node_modules/.sluice-installed: package.json package-lock.json .tools/node/bin/node
	npm ci --no-audit --no-fund
	node scripts/postinstall.ts
	@touch $@

run: setup
	./bin/sluice serve

# The browser tests drive Debian's chromium (installed with apt-get when missing).
test: setup
	@bash scripts/ensure-chromium.sh
	npm test

typecheck: setup
	npm run typecheck

db-stop: setup
	./bin/sluice db stop

clean:
	rm -rf node_modules .tools
