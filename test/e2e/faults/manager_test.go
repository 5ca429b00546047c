//go:build faults

package faults

import (
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestManagerKilled SIGKILLs the manager (dev runs it as a child and
// starts it again) at a random point after each of create, expand,
// snapshot, backup and delete, for CAIRN_FAULTS_MANAGER_ROUNDS rounds
// (default 1; make faults runs 10, 50 kills): after each kill everything
// converges, fio's data verifies, each backup asked for is one Backup
// object and one manifest in the target, a deleted backup (deletePolicy
// Delete) leaves no manifest and the deleted volume nothing behind.
func TestManagerKilled(t *testing.T) {
	rounds := 1
	if s := os.Getenv("CAIRN_FAULTS_MANAGER_ROUNDS"); s != "" {
		var err error
		rounds, err = strconv.Atoi(s)
		require.NoError(t, err, "CAIRN_FAULTS_MANAGER_ROUNDS")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("kill points drawn with seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	dir := t.TempDir()
	target := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "fault-mgr"}, Spec: v1.BackupTargetSpec{URL: "file://" + dir}}
	require.NoError(t, k8s.Create(bg, target))
	t.Cleanup(func() { _ = k8s.Delete(bg, target) })
	kills := 0
	var heal time.Duration
	for i := range rounds {
		kills += managerRound(t, "fault-mgr-"+strconv.Itoa(i), dir, rng, &heal)
	}
	t.Logf("%d manager kills", kills)
	record(t, figures{heal: heal / time.Duration(kills)})
}

// managerRound runs one volume through its life with a kill after each
// step; heal adds up the time from each kill to convergence.
func managerRound(t *testing.T, vol, target string, rng *rand.Rand, heal *time.Duration) int {
	kills := 0
	step := func(what string, do func(), converged func(c *assert.CollectT)) {
		t.Helper()
		do()
		killManagerAfter(t, time.Duration(rng.IntN(400))*time.Millisecond)
		start := time.Now()
		require.EventuallyWithT(t, converged, wait, tick, "%s did not converge after the manager was killed", what)
		*heal += time.Since(start)
		kills++
	}
	r := region{offset: 0, size: 16 << 20}
	var blk string
	step("create", func() { newVolume(t, vol, "256Mi", 2, 5*time.Second) }, func(c *assert.CollectT) {
		v := getVolume(c, vol)
		assert.Equal(c, v1.VolumeDetached, v.Status.State)
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
	})
	blk = attach(t, vol, "dev-node-2", 2)
	require.NoError(t, fio(t.TempDir(), r.args(blk)))
	step("expand", func() { patchVolume(t, vol, func(v *v1.Volume) { v.Spec.Size = resource.MustParse("512Mi") }) }, func(c *assert.CollectT) {
		v := getVolume(c, vol)
		assert.Equal(c, "512Mi", v.Status.ActualSize.String())
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
	})
	snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: vol + "-snap"}, Spec: v1.SnapshotSpec{VolumeName: vol}}
	step("snapshot", func() { require.NoError(t, k8s.Create(bg, snap)) }, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKeyFromObject(snap), snap))
		assert.True(c, snap.Status.ReadyToUse, "%v", snap.Status.Conditions)
	})
	b := &v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: vol + "-backup"}, Spec: v1.BackupSpec{
		VolumeName: vol, SnapshotName: snap.Name, BackupTargetRef: "fault-mgr", DeletePolicy: "Delete"}}
	step("backup", func() { require.NoError(t, k8s.Create(bg, b)) }, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKeyFromObject(b), b))
		assert.Equal(c, "Completed", b.Status.State, "%v", b.Status.Conditions)
	})
	var backups v1.BackupList
	require.NoError(t, k8s.List(bg, &backups))
	require.Equal(t, 1, countFunc(backups.Items, func(b v1.Backup) bool { return b.Spec.VolumeName == vol }), "duplicated Backup objects")
	require.Len(t, manifests(t, target, vol), 1, "duplicated backups in the target")
	require.NoError(t, fio(t.TempDir(), append(r.args(blk), "--verify_only")))
	step("delete", func() {
		require.NoError(t, k8s.Delete(bg, b))
		require.NoError(t, k8s.Delete(bg, snap))
		require.NoError(t, k8s.Delete(bg, &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: vol}}))
	}, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, client.ObjectKeyFromObject(b), &v1.Backup{})), "backup not deleted")
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, client.ObjectKey{Name: vol}, &v1.Volume{})), "volume not deleted")
	})
	deleteVolume(t, vol) // nothing leaked
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Empty(c, manifests(t, target, vol), "the deleted backup (deletePolicy Delete) is still in the target")
	}, wait, tick)
	return kills
}

// killManagerAfter SIGKILLs the manager after d and waits until dev has
// started a new one.
func killManagerAfter(t *testing.T, d time.Duration) {
	t.Helper()
	old := procs("cairn manager")
	require.Len(t, old, 1, "manager processes")
	<-time.After(d) // the kill point, not a wait for anything
	require.NoError(t, syscall.Kill(old[0], syscall.SIGKILL))
	require.Eventually(t, func() bool {
		now := procs("cairn manager")
		return len(now) == 1 && !slices.Contains(old, now[0])
	}, wait, tick, "dev did not start the manager again")
}

func countFunc[T any](s []T, f func(T) bool) int {
	n := 0
	for _, x := range s {
		if f(x) {
			n++
		}
	}
	return n
}

// manifests lists the backup manifests of vol in the file target at dir
// (volumes/VOL/backups/*.manifest, engine/backupstore/doc.go).
func manifests(t *testing.T, dir, vol string) []string {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".manifest") && strings.Contains(path, "/volumes/"+vol+"/backups/") {
			out = append(out, path)
		}
		return err
	})
	require.NoError(t, err)
	return out
}
