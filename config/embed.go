// Package config embeds Cairn's generated CRDs, webhook configuration and
// samples so that `cairn dev` and the tests install exactly what `make
// manifests` produced, from any working directory.
package config

import "embed"

// CRDs holds crd/bases/*.yaml.
//
//go:embed crd/bases/*.yaml
var CRDs embed.FS

// Webhooks holds webhook/manifests.yaml.
//
//go:embed webhook/manifests.yaml
var Webhooks embed.FS

// Samples holds samples/ (kustomization.yaml at its root; internal/ holds
// the kinds Cairn writes itself).
//
//go:embed samples
var Samples embed.FS

// CSIDriver holds csi/csidriver.yaml, the CSIDriver object `cairn dev`
// installs as a cluster would.
//
//go:embed csi/csidriver.yaml
var CSIDriver []byte

// SnapshotCRDs holds snapshot-crds/*.yaml: the (group) snapshot CRDs of the
// pinned external-snapshotter (hack/snapshot-crds.sh).
//
//go:embed snapshot-crds/*.storage.k8s.io_*.yaml
var SnapshotCRDs embed.FS
