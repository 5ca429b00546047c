//go:build faults

package faults

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/engine/backupstore"
)

// TestFullBackupTarget backs up 64 MiB of incompressible data (two packs'
// worth) to a file:// target on a 48 MiB file system: the Backup fails
// for good with the reason in its Stalled condition and a Warning event,
// the target's catalogue lists no backup of the volume and holds no
// manifest of it, and after `cairn backup gc` no pack is left. (Whether
// the first pack was stored before the disk filled depends on how the
// two packs' uploads overlapped, so the count is reported, not asserted;
// backupstore's GC tests cover unindexed packs.)
func TestFullBackupTarget(t *testing.T) {
	const vol = "fault-fulltarget"
	dir := filepath.Join(t.TempDir(), "target")
	smallDisk(t, dir, 48<<20)
	url := "file://" + dir
	target := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: vol}, Spec: v1.BackupTargetSpec{URL: url}}
	require.NoError(t, k8s.Create(bg, target))
	t.Cleanup(func() { _ = k8s.Delete(bg, target) }) // before the small disk goes
	newVolume(t, vol, "128Mi", 2, time.Hour)
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 2)
	blk := vols.Attach(t, vol, "dev-node-1", 2)
	data := region{offset: 0, size: 64 << 20}
	require.NoError(t, fio(t.TempDir(), append(data.args(blk), "--rw=write", "--bs=1M", "--refill_buffers", "--buffer_compress_percentage=0")))

	b := &v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: vol}, Spec: v1.BackupSpec{VolumeName: vol, BackupTargetRef: vol}}
	require.NoError(t, k8s.Create(bg, b))
	t.Cleanup(func() { _ = k8s.Delete(bg, b) })
	detect := waitFor(t, "the backup did not fail", func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKeyFromObject(b), b))
		assert.Equal(c, "Failed", b.Status.State)
	})
	stalled := meta.FindStatusCondition(b.Status.Conditions, "Stalled")
	require.NotNil(t, stalled, "%v", b.Status.Conditions)
	require.Equal(t, "BackupFailed", stalled.Reason)
	require.Contains(t, stalled.Message, backupstore.ErrTargetFull.Error())
	require.False(t, meta.IsStatusConditionTrue(b.Status.Conditions, v1.ConditionReady))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var events eventsv1.EventList
		assert.NoError(c, k8s.List(bg, &events))
		found := false
		for _, e := range events.Items {
			found = found || (e.Regarding.Name == b.Name && e.Reason == "BackupFailed" && e.Type == "Warning")
		}
		assert.True(c, found, "no BackupFailed event for the backup")
	}, wait, tick)

	// Nothing of it is visible: no catalogue entry, no manifest.
	store, err := backupstore.Open(bg, url, backupstore.Options{})
	require.NoError(t, err)
	listed, err := store.List(bg, vol)
	require.NoError(t, err)
	require.Empty(t, listed, "the failed backup is listed")
	require.Empty(t, manifests(t, dir, vol))
	stored := packFiles(t, dir)

	// GC removes its debris.
	out, err := exec.Command(dev.Bin, "backup", "gc", "--target", url).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Zero(t, packFiles(t, dir), "packs left after gc:\n%s", out)
	t.Logf("%d packs of the failed backup removed by gc", stored)

	require.NoError(t, fio(t.TempDir(), append(data.args(blk), "--rw=write", "--bs=1M", "--verify_only")))
	require.NoError(t, k8s.Delete(bg, b))
	deleteVolume(t, vol)
	require.NoError(t, k8s.Delete(bg, target))
	emptyDir(t, dir)
	record(t, figures{detect: detect})
}

// packFiles counts the pack objects in the file target at dir.
func packFiles(t *testing.T, dir string) int {
	n := 0
	err := filepath.WalkDir(filepath.Join(dir, "packs"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		if os.IsNotExist(err) {
			return nil
		}
		return err
	})
	require.NoError(t, err)
	return n
}

// emptyDir removes everything in dir but lost+found.
func emptyDir(t *testing.T, dir string) {
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		if e.Name() != "lost+found" {
			require.NoError(t, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
}
