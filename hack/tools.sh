#!/usr/bin/env bash
# Builds the local control plane and test servers into bin/ from Go modules:
# kube-apiserver, kube-controller-manager and etcd (hack/tools), kubectl (hack/tools/kubectl),
# the CSI sidecars (hack/tools/csi), controller-gen and versitygw. Each
# tool is rebuilt only when missing or when its pinned version (or Go) changed,
# tracked by a stamp file. A cold build takes about 25-35 minutes on 2 cores
# (docs/development.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
mkdir -p "$BIN"

CONTROLLER_GEN_VERSION=v0.23.0
VERSITYGW_VERSION=v1.8.0
GOVER=$(go env GOVERSION)

# stamp_ok NAME KEY: true when bin/NAME exists and was built for KEY.
stamp_ok() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.stamp" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$BIN/.$1.stamp"; }

build() { # NAME KEY COMMAND...
  local name=$1 key=$2; shift 2
  if stamp_ok "$name" "$key"; then return; fi
  echo "building $name ($key)"
  local start=$SECONDS
  "$@"
  stamp "$name" "$key"
  echo "built $name in $((SECONDS - start))s"
}

k8s_key="$(sha256sum hack/tools/go.mod hack/tools/go.sum | sha256sum | cut -c1-16) $GOVER"
etcd_key="$(sha256sum hack/tools/etcd/go.mod hack/tools/etcd/go.sum | sha256sum | cut -c1-16) $GOVER"
kubectl_key="$(sha256sum hack/tools/kubectl/go.mod hack/tools/kubectl/go.sum | sha256sum | cut -c1-16) $GOVER"
KUBECTL_VERSION=v1.37.2
kubectl_ldflags="-X k8s.io/component-base/version.gitVersion=$KUBECTL_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$KUBECTL_VERSION"

build kube-apiserver "$k8s_key" \
  bash -c "cd hack/tools && go build -o '$BIN/kube-apiserver' ./kube-apiserver"
build kube-controller-manager "$k8s_key" \
  bash -c "cd hack/tools && go build -o '$BIN/kube-controller-manager' ./kube-controller-manager"
build etcd "$etcd_key" \
  bash -c "cd hack/tools/etcd && go build -o '$BIN/etcd' ."
build kubectl "$kubectl_key" \
  bash -c "cd hack/tools/kubectl && go build -ldflags '$kubectl_ldflags' -o '$BIN/kubectl' ."
# The CSI sidecars: one module for all of them (version selection takes the highest k8s.io and
# shared dependencies any of them needs, so they compile those packages once, not once each),
# built with the go.mod tool directive because their main packages cannot be imported.
csi_key="$(sha256sum hack/tools/csi/go.mod hack/tools/csi/go.sum | sha256sum | cut -c1-16) $GOVER"
csi_tool() { # NAME PACKAGE
  build "$1" "$csi_key" bash -c "cd hack/tools/csi && go build -o '$BIN/$1' '$2'"
}
csi_tool csi-provisioner github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
csi_tool csi-attacher github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher
csi_tool csi-snapshotter github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter
csi_tool snapshot-controller github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller
csi_tool csi-resizer github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer

build controller-gen "$CONTROLLER_GEN_VERSION $GOVER" \
  env GOBIN="$BIN" go install "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_GEN_VERSION"
build versitygw "$VERSITYGW_VERSION $GOVER" \
  env GOBIN="$BIN" go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
