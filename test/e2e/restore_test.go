package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

const mib = 1 << 20

// TestVolumeFromBackup: a backup made by `cairn backup create` in a file
// target becomes a Volume through spec.fromBackup: every replica is filled
// from it on its node, the volume attaches only then, at its larger size,
// and reads back the image byte for byte with zeros beyond it. A third
// replica added later, while detached, is empty: the engine must rebuild it
// from the restored ones rather than read from it. A missing backup and a
// volume too small for the backup stall with their reasons.
func TestVolumeFromBackup(t *testing.T) {
	t.Parallel()
	target := filepath.Join(dataDir, "e2e-backups")
	require.NoError(t, os.MkdirAll(target, 0o700))
	image, sum := makeImage(t, 64*mib)
	out, err := exec.Command(cairnBin, "backup", "--target", "file://"+target, "create", "--volume", "src", "--file", image).CombinedOutput()
	require.NoError(t, err, "%s", out)

	bt := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "e2e-file"}}
	bt.Spec.URL = "file://" + target
	require.NoError(t, k8s.Create(bg, bt))
	p := createPolicy(t, "e2e-restore", "restore", 2)
	t.Run("missing backup stalls", func(t *testing.T) {
		createRestoredVolume(t, "e2e-restore-missing", "96Mi", "no-such-backup")
		requireStalled(t, "e2e-restore-missing", "BackupNotFound")
	})
	t.Run("too small stalls", func(t *testing.T) {
		createRestoredVolume(t, "e2e-restore-small", "32Mi", "")
		requireStalled(t, "e2e-restore-small", "BackupTooLarge")
	})

	const vol = "e2e-restored"
	createRestoredVolume(t, vol, "96Mi", "")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.True(c, meta.IsStatusConditionTrue(v.Status.Conditions, v1.ConditionRestored))
		assert.NotEmpty(c, v.Status.RestoredBackup)
		for _, rep := range replicaObjects(c, vol) {
			assert.Equal(c, v.Status.RestoredBackup, rep.Status.RestoredBackup, "replica %s", rep.Name)
		}
	}, wait, tick)
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 2)

	// A third replica, created empty after the restore, while detached.
	patchPolicy(t, p.Name, func(p *v1.VolumePolicy) { p.Spec.Replicas = 3 })
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 3)
	for _, rep := range replicaObjects(t, vol) {
		if rep.Spec.Restore == nil {
			assert.Empty(t, rep.Status.RestoredBackup)
		}
	}

	dev := vols.Attach(t, vol, "dev-node-2", 3)
	assert.Equal(t, "100663296", deviceSize(t, dev))
	requireContent(t, dev, 64*mib, sum)

	// Reads served by the replica added later alone: the restored ones
	// are killed, so it must have been rebuilt from them.
	for _, rep := range replicaObjects(t, vol) {
		if rep.Spec.Restore != nil {
			for _, pid := range suite.Procs("cairn replica", "--replica "+rep.Name) {
				require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
			}
		}
	}
	requireContent(t, dev, 64*mib, sum)
	vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	requireContent(t, dev, 64*mib, sum)

}

// createRestoredVolume creates a volume of the restore policy from the
// e2e-file target's volume "src" (backup "" = the newest).
func createRestoredVolume(t *testing.T, name, size, backup string) {
	t.Helper()
	v := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "restore"}}}
	v.Spec.Size = resource.MustParse(size)
	v.Spec.FromBackup = &v1.BackupSource{BackupTargetRef: "e2e-file", Volume: "src", Backup: backup}
	require.NoError(t, k8s.Create(bg, v))
}

func requireStalled(t *testing.T, name, reason string) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := vols.Get(c, name)
		cond := meta.FindStatusCondition(v.Status.Conditions, v1.ConditionStalled)
		if assert.NotNil(c, cond) {
			assert.Equal(c, reason, cond.Reason)
		}
		assert.Empty(c, replicaObjects(c, name), "a stalled restore placed replicas")
	}, wait, tick)
}

// makeImage writes a sparse image of size bytes with random data in two
// regions and returns its path and SHA-256.
func makeImage(t *testing.T, size int64) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image")
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, f.Truncate(size))
	for _, r := range []struct{ off, n int64 }{{0, 8 * mib}, {40 * mib, 4 * mib}} {
		buf := make([]byte, r.n)
		_, _ = rand.Read(buf)
		_, err := f.WriteAt(buf, r.off)
		require.NoError(t, err)
	}
	h := sha256.New()
	_, err = io.Copy(h, io.NewSectionReader(f, 0, size))
	require.NoError(t, err)
	return path, h.Sum(nil)
}

// requireContent reads the device with O_DIRECT (past the page cache) and
// checks its first n bytes hash to sum and the rest reads as zeros.
func requireContent(t *testing.T, dev string, n int64, sum []byte) {
	t.Helper()
	data := readDevice(t, dev)
	require.Greater(t, int64(len(data)), n)
	got := sha256.Sum256(data[:n])
	require.Equal(t, sum, got[:], "restored data differs from the image")
	rest := data[n:]
	require.True(t, bytes.Equal(rest, make([]byte, len(rest))), "bytes beyond the backup are not zero")
}
