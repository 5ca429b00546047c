package csi

import (
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
)

// TestSanity runs every csi-sanity spec against the driver: the
// controller socket of cairn dev's manager and dev-node-1's node socket.
// Volumes are small and keep one replica (StorageClass parameter) so the
// suite stays quick on a shared machine; snapshots are backups
// (VolumeSnapshotClass type: backup), the kind Cairn restores volumes from.
func TestSanity(t *testing.T) {
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + nodeSock
	cfg.ControllerAddress = "unix://" + controllerSock
	cfg.TargetPath = filepath.Join(tmp, "target")
	cfg.StagingPath = filepath.Join(tmp, "staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 128 << 20
	cfg.TestVolumeParameters = map[string]string{"replicas": "1"}
	cfg.TestSnapshotParameters = map[string]string{"type": "backup", "backupTarget": backupTarget}
	cfg.IdempotentCount = 3
	sanity.Test(t, cfg)
}
