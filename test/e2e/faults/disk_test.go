package faults

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestFullDisk gives one node a 48 MiB file system (ext4 on a loop device)
// as its replicas directory and writes more than that to a volume with a
// replica on every node: that replica goes ERR, the volume degraded, fio
// keeps verifying; a policy of one replica fewer drops the failed one and
// the volume is healthy again.
func TestFullDisk(t *testing.T) {
	const vol, full = "fault-disk", "dev-node-4"
	smallDisk(t, filepath.Join(dev.DataDir, "nodes", full, "replicas"), 48<<20)
	newVolume(t, vol, "256Mi", suiteNodes, 5*time.Second)
	vols.WaitHealthy(t, vol, v1.VolumeDetached, suiteNodes)
	blk := vols.Attach(t, vol, "dev-node-1", suiteNodes)
	var victim string
	for _, r := range vols.Get(t, vol).Status.Replicas {
		if r.Node == full {
			victim = r.Name
		}
	}
	require.NotEmpty(t, victim)

	w := startWriter(t, blk, 8, 16<<20) // 128 MiB: more than the small disk holds
	start := time.Now()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.Equal(c, v1.RobustnessDegraded, v.Status.Robustness)
		assert.Contains(c, v.Status.Replicas, v1.VolumeReplicaStatus{Name: victim, Node: full, Mode: "ERR"})
	}, wait, tick, "the replica on the full disk did not go ERR")
	detect := time.Since(start)
	w.waitPasses(t, 2) // I/O goes on on the others

	// The way out: one replica fewer drops the failed one.
	setReplicas(t, vol, suiteNodes-1)
	heal := waitFor(t, "the failed replica was not dropped", func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
		assert.NotContains(c, replicaNames(v), victim)
	})
	vols.WaitHealthy(t, vol, v1.VolumeAttached, suiteNodes-1)
	w.waitPasses(t, 1)
	w.finish(t)
	record(t, figures{detect: detect, heal: heal})
}

// smallDisk mounts a fresh ext4 file system of size bytes, on a loop
// device over a file in the test's temp dir, at dir; it is unmounted and
// the loop device detached when the test ends (after the volume's cleanup,
// which must have emptied it).
func smallDisk(t *testing.T, dir string, size int64) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	require.NoError(t, f.Close())
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	require.NoError(t, err, "%s", out)
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", loop).Run() })
	run(t, "mkfs.ext4", "-q", "-m", "0", loop)
	require.NoError(t, os.MkdirAll(dir, 0o700))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "%s is in use", dir)
	run(t, "mount", loop, dir)
	t.Cleanup(func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() != "lost+found" {
				t.Errorf("%s left on the small disk", e.Name())
			}
		}
		run(t, "umount", dir)
	})
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
}

func replicaNames(v *v1.Volume) []string {
	var out []string
	for _, r := range v.Status.Replicas {
		out = append(out, r.Name)
	}
	return out
}
