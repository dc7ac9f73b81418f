# Herald's build. `make test` is what CI runs (.ci/run): it installs what the
# tests need, starts it, checks the generated code and the linters, and runs
# every test with -race.

SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/.bin
export PATH := $(BIN):$(PATH)

REDIS_ADDR ?= 127.0.0.1:6379

.PHONY: test deps services tools proto check-proto lint unit bench bench-quick bench-cluster fuzz clean

test: deps services tools check-proto lint unit

## unit: every test with -race; then, in a plain build, the one test that
## measures the edge's goroutine stacks, which the race detector's larger
## frames keep from shrinking (it skips, saying so, under -race).
unit:
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -timeout 10m -run '^TestH2HeldStreamStackShrinks$$' -v ./sseedge/ | grep -E '^(=== RUN|--- |ok|FAIL|PASS)|goroutine stacks' ; exit $${PIPESTATUS[0]}

## deps: install missing Debian packages (needs root, as CI has): redis-server,
## chromium for the browser tests, and prometheus for promtool, which checks
## docs/alerts.yml. Debian starts a Prometheus server on :9090 when it installs
## the package, where Herald's admin listener goes: deps stops and disables it.
deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
		case "$$missing" in *prometheus*) { $$SUDO systemctl disable --now prometheus || { $$SUDO service prometheus stop; $$SUDO update-rc.d prometheus disable; }; } >/dev/null 2>&1 || true;; esac; \
	fi

## services: start the shared redis-server the tests use, if none answers.
services: deps
	@addr=$(REDIS_ADDR); host=$${addr%:*}; port=$${addr##*:}; \
	if ! redis-cli -h $$host -p $$port ping >/dev/null 2>&1; then \
		echo "starting redis-server on $(REDIS_ADDR)"; \
		redis-server --daemonize yes --bind $$host --port $$port --save "" --appendonly no \
			--logfile /tmp/herald-test-redis.log; \
		for i in $$(seq 50); do redis-cli -h $$host -p $$port ping >/dev/null 2>&1 && break; sleep 0.1; done; \
		redis-cli -h $$host -p $$port ping >/dev/null || { echo "redis-server did not start"; exit 1; }; \
	fi

## tools: build the pinned code generators and linters into .bin/.
tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/staticcheck

$(BIN)/buf $(BIN)/protoc-gen-go-grpc $(BIN)/staticcheck: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $(BIN)/ github.com/bufbuild/buf/cmd/buf \
		google.golang.org/grpc/cmd/protoc-gen-go-grpc honnef.co/go/tools/cmd/staticcheck

# protoc-gen-go is built at the protobuf version the module itself uses, so
# the generated code always matches its runtime.
$(BIN)/protoc-gen-go: go.mod go.sum
	$(GO) build -o $(BIN)/ google.golang.org/protobuf/cmd/protoc-gen-go

## proto: regenerate the Go code from proto/.
proto: tools
	buf lint
	buf generate

## check-proto: fail when buf lint fails or the committed code is stale.
check-proto: tools
	buf lint
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	buf generate -o $$tmp; \
	if ! diff -r -x '*.proto' $$tmp/proto proto; then \
		echo "generated code in proto/ is stale: run 'make proto' and commit"; exit 1; \
	fi

lint: tools
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

## bench: the benchmarks, with the Redis PUBLISH baseline they are compared to,
## then the load tool's scenarios against Herald in-process, every one that
## issue 17's goals table reads, at the goals' sizes (-scenario goals); the
## table of goals, each met or not, comes last (docs/benchmarks.md). Long:
## about 20 minutes on 2 vCPUs. BENCH_ARGS go to heraldbench (-json FILE).
## bench-quick: the same scenarios with -quick's small numbers, without the
## Go benchmarks: a few minutes.
BENCH_ARGS ?=
bench: services
	$(GO) test -run '^$$' -bench . -benchtime 3s ./...
	$(GO) run ./cmd/heraldbench -self -redis $(REDIS_ADDR) -scenario goals $(BENCH_ARGS)

bench-quick: services
	$(GO) run ./cmd/heraldbench -self -quick -redis $(REDIS_ADDR) -scenario goals $(BENCH_ARGS)

## bench-cluster: the router and unicast scenarios on a single redis-server,
## then on a local 3-primary Redis Cluster (sharded Pub/Sub), in one run, so
## the two can be compared (docs/benchmarks.md). CLUSTER_PORT is the first
## of its three ports.
CLUSTER_PORT ?= 7301
BENCH_CLUSTER_ARGS ?= -scenario router,unicast -rates 1000,3000
bench-cluster: services
	$(GO) run ./cmd/heraldbench -self -redis $(REDIS_ADDR) $(BENCH_CLUSTER_ARGS)
	@dir=$$(mktemp -d); ports="$(CLUSTER_PORT) $$(($(CLUSTER_PORT)+1)) $$(($(CLUSTER_PORT)+2))"; \
	trap 'for p in '"$$ports"'; do redis-cli -p $$p shutdown nosave >/dev/null 2>&1; done; rm -rf $$dir' EXIT; \
	for p in $$ports; do mkdir -p $$dir/$$p; \
		redis-server --port $$p --bind 127.0.0.1 --daemonize yes --save "" --appendonly no --dir $$dir/$$p \
			--cluster-enabled yes --cluster-config-file nodes.conf --logfile $$dir/$$p/redis.log || exit 1; done; \
	for p in $$ports; do for i in $$(seq 50); do redis-cli -p $$p ping >/dev/null 2>&1 && break; sleep 0.1; done; done; \
	redis-cli --cluster create $$(for p in $$ports; do echo 127.0.0.1:$$p; done) --cluster-replicas 0 --cluster-yes >/dev/null || exit 1; \
	for i in $$(seq 100); do redis-cli -p $(CLUSTER_PORT) cluster info | grep -q cluster_state:ok && break; sleep 0.1; done; \
	$(GO) run ./cmd/heraldbench -self -redis 127.0.0.1:$(CLUSTER_PORT) $(BENCH_CLUSTER_ARGS)

## fuzz: run each fuzzer for a while (FUZZTIME, default 30s).
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzFrame$$' -fuzztime $(FUZZTIME) ./sseedge/
	$(GO) test -run '^$$' -fuzz '^FuzzFrameBody$$' -fuzztime $(FUZZTIME) ./sseedge/
	$(GO) test -run '^$$' -fuzz '^FuzzDecoder$$' -fuzztime $(FUZZTIME) ./sseedge/
	$(GO) test -run '^$$' -fuzz '^FuzzCursor$$' -fuzztime $(FUZZTIME) ./sseedge/
	$(GO) test -run '^$$' -fuzz '^FuzzToken$$' -fuzztime $(FUZZTIME) ./sseedge/
	$(GO) test -run '^$$' -fuzz '^FuzzEnvelope$$' -fuzztime $(FUZZTIME) ./delivery/
	$(GO) test -run '^$$' -fuzz '^FuzzDeadLetter$$' -fuzztime $(FUZZTIME) ./cmd/heraldctl/
	$(GO) test -run '^$$' -fuzz '^FuzzSend$$' -fuzztime $(FUZZTIME) ./fcm/fcmtest/
	$(GO) test -run '^$$' -fuzz '^FuzzStreamSequence$$' -fuzztime $(FUZZTIME) ./router/

clean:
	rm -rf $(BIN)
