# Cairn — run `make help` for the targets.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
BIN := $(CURDIR)/bin
CONTROLLER_GEN := $(BIN)/controller-gen
GO_TEST_FLAGS ?= -timeout 40m
# The manager's role comes from the top-level controllers package, the scheduler, the DR controller, the CSI
# controller (csi) and the dashboard; the node agent (controllers/node) gets its own least-privilege role in
# config/rbac/node.
CRD_PATHS := paths="./api/..." paths="./controllers" paths="./controllers/scheduler" paths="./controllers/dr" paths="./csi" paths="./dashboard" paths="./internal/webhook/..."

.DEFAULT_GOAL := help

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: deps
deps: ## Install the Debian packages the tests drive (fio, qemu-utils, nbdkit, libnbd-bin, awscli, restic, e2fsprogs, chromium).
	./hack/install-deps.sh

.PHONY: tools
tools: ## Build kube-apiserver, kube-controller-manager, etcd, kubectl, the CSI sidecars, controller-gen and versitygw into bin/ (cached by a stamp; ~30 min cold).
	./hack/tools.sh

.PHONY: generate
generate: tools ## Generate deepcopy code.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths="./api/..."

.PHONY: manifests
manifests: tools ## Generate CRDs, RBAC and webhook configuration into config/.
	$(CONTROLLER_GEN) crd rbac:roleName=cairn-manager webhook $(CRD_PATHS) \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac \
		output:webhook:artifacts:config=config/webhook
	$(CONTROLLER_GEN) rbac:roleName=cairn-node paths="./controllers/node/..." \
		output:rbac:artifacts:config=config/rbac/node

.PHONY: fmt
fmt: ## Run gofmt.
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: verify
verify: generate manifests fmt ## Regenerate, then fail if the tree is dirty.
	git diff --exit-code || { echo "generated files or formatting are out of date: run make generate manifests fmt"; exit 1; }

##@ Build and run

.PHONY: build
build: ## Build bin/cairn and bin/cairnctl.
	go build -o $(BIN)/cairn ./cmd/cairn
	go build -o $(BIN)/cairnctl ./cmd/cairnctl

.PHONY: dev
dev: tools build ## Two local clusters (primary, dr-site) with examples/ applied, a writer and a live view (state in .cairn/dev).
	$(BIN)/cairn dev --dr-site --examples examples

.PHONY: deploy
deploy: ## Apply config/default to the cluster in $$KUBECONFIG (needs kubectl and cert-manager).
	kubectl apply --server-side -k config/default

##@ Test

# The data plane's packages run under the race detector; the rest without.
DATA_PLANE := ./replica/... ./engine/... ./internal/netx/... ./internal/rawsys/... ./internal/durable/...

.PHONY: test
test: deps tools build ## Install/build what is missing, then run every test (the data plane with -race).
	go test $(GO_TEST_FLAGS) $$(go list ./... | grep -v -e '/replica' -e '/engine' -e '/internal/netx' -e '/internal/rawsys' -e '/internal/durable')
	go test -race $(GO_TEST_FLAGS) $(DATA_PLANE)

.PHONY: faults
faults: deps tools build ## Run every fault scenario (test/e2e/faults on cairn dev --netns; make test runs the fast ones) and print time to detect, time to heal and bytes resynced.
	@mkdir -p .cairn
	CAIRN_FAULTS_TABLE=$(CURDIR)/.cairn/faults.txt CAIRN_FAULTS_MANAGER_ROUNDS=8 go test -tags faults -count=1 -v $(GO_TEST_FLAGS) ./test/e2e/faults/; rc=$$?; cat .cairn/faults.txt; exit $$rc

.PHONY: record-health
record-health: deps tools build ## Re-record config/argocd/testdata: every state the end-to-end suites' objects pass through.
	rm -rf config/argocd/testdata
	CAIRN_RECORD_HEALTH=$(CURDIR)/config/argocd/testdata go test -count=1 -timeout 60m ./test/e2e/... ./cmd/cairnctl/ ./test/gitops/

.PHONY: bench
bench: deps tools build ## Run the benchmarks (ratios against peers, printed as tables).
	go test -tags bench -run '^TestBench' -v -timeout 120m ./...
