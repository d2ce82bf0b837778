# SLTR backend: the front door. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
S := scripts

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

install: ## Install Debian packages and npm dependencies (idempotent)
	@$(S)/install.sh

dev: install ## Start the whole local stack (bridge, demo driver); functions and Realtime in the foreground
	@$(S)/stack.sh db
	@$(S)/stack.sh bridge
	@$(S)/stack.sh demo
	@$(S)/stack.sh functions

start: install ## Start the local stack in the background; returns when ready
	@$(S)/stack.sh start

stop: ## Stop the local stack
	@$(S)/stack.sh stop

status: ## Print URLs and keys as NAME=value lines
	@$(S)/stack.sh status

migrate: ## Apply pending migrations (dbmate)
	@$(S)/db.sh migrate

rollback: ## Roll back the latest migration (dbmate)
	@$(S)/db.sh rollback

db-status: ## List applied and pending migrations
	@$(S)/db.sh status

migration: ## A new migration and its rollback from the template: make migration NAME=add_something
	@$(S)/new_migration.sh "$(NAME)"

bridge: install ## Run a presence bridge in the foreground (SUPABASE_URL=https://<ref>.supabase.co for hosted)
	@source $(S)/lib.sh && unset BRIDGE_HEALTH_PORT && export SUPABASE_URL="$${SUPABASE_URL:-$$API_URL}" SUPABASE_SERVICE_ROLE_KEY="$${SUPABASE_SERVICE_ROLE_KEY:-$$SERVICE_ROLE_KEY}" \
	  && log "presence bridge: Realtime at $$SUPABASE_URL/realtime/v1, webhook at $${PRESENCE_WEBHOOK_URL:-$$SUPABASE_URL/functions/v1/presence-webhook} (Ctrl-C stops it)" \
	  && exec "$$NODE_BIN/deno" run --allow-net --allow-env workers/presence-bridge/main.ts

types: ## Generate client/database.types.ts from the local database schema
	@$(S)/types.sh

psql: ## Open psql on the local database
	@source $(S)/lib.sh && exec psql "$$DB_URL"

lint: install ## squawk on migrations/, deno lint and fmt --check
	@$(S)/test.sh lint

test: install ## Run every suite: lint, pgTAP, migrations, advisors, deploy, Deno, faults, fuzz
	@$(S)/test.sh all

test-db: install ## The pgTAP suites (tests/db), as a DBA runs them with pg_prove
	@$(S)/test.sh db

test-migrations: install ## Up/down/up of every migration, dbmate, supabase db push; make start/status (tests/migrations.sh, tests/stack.sh)
	@$(S)/test.sh migrations

test-functions: install ## The edge functions over HTTP (tests/functions)
	@$(S)/test.sh deno tests/functions

test-realtime: install ## The Realtime endpoint, the bridge and the client module (tests/realtime, tests/client)
	@$(S)/test.sh deno tests/realtime tests/client

test-faults: install ## Fault injection on a throwaway stack (tests/faults)
	@$(S)/test.sh faults

test-fuzz: install ## Malformed requests on a throwaway stack (tests/fuzz)
	@$(S)/test.sh fuzz

BENCH_ARGS ?= --users 50000 --online-ratio 0.1 --duration 120 --warmup 60
# The benchmarks drive thousands of requests per user: the stack's suites profile
# (supabase/suites.env), for them and for the stack they start (prerequisites inherit it).
bench bench-workers bench-push bench-rebuild bench-presence bench-storm bench-realtime bench-blocks: export SLTR_STACK_PROFILE = suites

bench: start ## Benchmark against the local stack (BENCH_ARGS="--users 1000000 ...")
	@source $(S)/lib.sh && export_app_env && "$$NODE_BIN/deno" run -A bench/run.ts $(BENCH_ARGS)

demo: start ## The demo driver in the foreground: seed users 101-300 come and go (page: /demo/)
	@source $(S)/lib.sh && cd "$$ROOT" && exec "$$NODE_BIN/deno" run -A demo/driver.ts

BENCH_PUSH_ARGS ?= --online 50000 --clients 500 --duration 120
bench-workers: start ## One functions worker against one per core: nearby throughput at p99 < 100 ms, CPU per request
	@source $(S)/lib.sh && export_app_env && "$$NODE_BIN/deno" run -A bench/workers.ts $(BENCH_WORKERS_ARGS)

bench-push: start ## Push costs: inbox vs global topic, latency, messages/s, plan (BENCH_PUSH_ARGS=...)
	@source $(S)/lib.sh && export_app_env && "$$NODE_BIN/deno" run -A bench/push.ts $(BENCH_PUSH_ARGS)

bench-rebuild: start ## The live index's rebuild and reconciliation at 1M users against hosted Edge Function limits (BENCH_REBUILD_ARGS=...)
	@source $(S)/lib.sh && export_app_env && "$$NODE_BIN/deno" run -A bench/rebuild.ts $(BENCH_REBUILD_ARGS)

bench-presence: start ## Presence at scale on one topic: 10,000 supabase-js sockets, the bridge's sync, track -> online (BENCH_PRESENCE_ARGS=...)
	@source $(S)/lib.sh && export_app_env && "$$NODE_BIN/deno" run -A bench/presence_scale.ts $(BENCH_PRESENCE_ARGS)

bench-storm: start ## A reconnect storm: the Realtime endpoint restarted under 10,000 client-module apps (BENCH_STORM_ARGS=...)
	@source $(S)/lib.sh && export_app_env && "$$NODE_BIN/deno" run -A bench/storm.ts $(BENCH_STORM_ARGS)

bench-blocks: start ## What blocks, incognito and hidden distances cost a nearby read, in one run (BENCH_BLOCKS_ARGS=...)
	@source $(S)/lib.sh && export_app_env && "$$NODE_BIN/deno" run -A bench/blocks.ts $(BENCH_BLOCKS_ARGS)

try-presence: start ## Seed user 7 tracks presence; seed user 8 sees them nearby, then gone (examples/presence.ts)
	@source $(S)/lib.sh && "$$NODE_BIN/deno" run -A examples/presence.ts

bench-realtime: start ## Figures of the local Realtime endpoint (BENCH_REALTIME_ARGS="--connections 10000")
	@source $(S)/lib.sh && export_app_env && "$$NODE_BIN/deno" run -A bench/realtime.ts $(BENCH_REALTIME_ARGS)

.PHONY: help install dev start stop status migrate rollback db-status psql lint test bridge types bench bench-realtime bench-push bench-workers bench-rebuild bench-presence bench-storm bench-blocks try-presence demo migration test-db test-migrations test-functions test-realtime test-faults test-fuzz
