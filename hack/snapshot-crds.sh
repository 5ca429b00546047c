#!/usr/bin/env bash
# Copies the VolumeSnapshot, VolumeSnapshotContent and VolumeSnapshotClass
# CRDs, and their VolumeGroupSnapshot counterparts (the snapshot-controller
# waits for them: group snapshots are GA and on by default), into config/snapshot-crds from github.com/kubernetes-csi/external-snapshotter/client/v8
# at the version hack/tools/csi pins, so the CRDs always match the
# snapshotter and snapshot-controller built from that module. Run it after
# changing that version; it reads only the module cache (downloading the
# module through the Go module proxy when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
MOD=github.com/kubernetes-csi/external-snapshotter/client/v8
src=$(cd hack/tools/csi && go mod download -json "$MOD" >/dev/null && go list -m -f '{{.Dir}}' "$MOD")
version=$(cd hack/tools/csi && go list -m -f '{{.Version}}' "$MOD")
dst=config/snapshot-crds
files=()
for group in snapshot groupsnapshot; do
  prefix=${group%snapshot}
  for kind in volume${prefix}snapshotclasses volume${prefix}snapshotcontents volume${prefix}snapshots; do
    f=$group.storage.k8s.io_$kind.yaml
    install -m 0644 "$src/config/crd/$f" "$dst/$f"
    files+=("$f")
  done
done
cat > "$dst/kustomization.yaml" <<KUST
# The VolumeSnapshot CRDs from $MOD $version (hack/snapshot-crds.sh).
# Install them once per cluster when the distribution does not ship them,
# together with the snapshot-controller; \`cairn dev\` installs them itself.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
$(printf '  - %s\n' "${files[@]}")
KUST
echo "copied the snapshot CRDs of $MOD $version into $dst"
