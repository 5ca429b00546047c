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
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestManagerKilled SIGKILLs a manager (dev runs both sites' managers as
// children and starts them again) at a random point after each of create,
// scale (2 -> 3 replicas), expand, snapshot, backup, DR activation (the
// dr-site's manager) and delete, for CAIRN_FAULTS_MANAGER_ROUNDS rounds
// (default 1; make faults runs 8, 56 kills): after each kill everything
// converges, fio's data verifies, each backup asked for is one Backup
// object and one manifest in the target, a deleted backup (deletePolicy
// Delete) leaves no manifest, and the deleted volumes (the primary's and
// the activated DR volume) nothing behind.
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
	require.NotNil(t, drK8s, "dev runs no dr-site")
	dir, drDir := t.TempDir(), t.TempDir()
	create(t, k8s, &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "fault-mgr"}, Spec: v1.BackupTargetSpec{URL: "file://" + dir}})
	// DR volumes restore from backups kept in a target of their own
	// (deletePolicy Retain): an activated DR volume pins its backup.
	create(t, k8s, &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "fault-mgr-dr"}, Spec: v1.BackupTargetSpec{URL: "file://" + drDir}})
	create(t, drK8s, &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "fault-mgr-dr"}, Spec: v1.BackupTargetSpec{URL: "file://" + drDir, ReadOnly: true}})
	create(t, drK8s, &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: "fault-mgr-dr"}, Spec: v1.VolumePolicySpec{Replicas: 1}})
	kills := 0
	var heal time.Duration
	for i := range rounds {
		kills += managerRound(t, "fault-mgr-"+strconv.Itoa(i), dir, rng, &heal)
	}
	require.Len(t, manifestsAll(t, drDir), rounds, "DR backups in their target")
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
		killManagerAfter(t, what == "DR activation", time.Duration(rng.IntN(400))*time.Millisecond)
		start := time.Now()
		require.EventuallyWithT(t, converged, wait, tick, "%s did not converge after the manager was killed", what)
		*heal += time.Since(start)
		kills++
	}
	r := region{offset: 0, size: 16 << 20}
	var blk string
	step("create", func() { newVolume(t, vol, "256Mi", 2, 5*time.Second) }, func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.Equal(c, v1.VolumeDetached, v.Status.State)
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
	})
	blk = vols.Attach(t, vol, "dev-node-2", 2)
	require.NoError(t, fio(t.TempDir(), r.args(blk)))
	step("scale", func() { setReplicas(t, vol, 3) }, func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
		assert.Len(c, v.Status.Replicas, 3)
		for _, r := range v.Status.Replicas {
			assert.Equal(c, "RW", r.Mode, "replica %s", r.Name)
		}
	})
	step("expand", func() { vols.Patch(t, vol, func(v *v1.Volume) { v.Spec.Size = resource.MustParse("512Mi") }) }, func(c *assert.CollectT) {
		v := vols.Get(c, vol)
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
	drActivation(t, vol, snap.Name, step)
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

// killManagerAfter SIGKILLs the primary's manager (or the dr-site's)
// after d and waits until dev has started a new one.
func killManagerAfter(t *testing.T, drSite bool, d time.Duration) {
	t.Helper()
	old := managers(drSite)
	require.Len(t, old, 1, "manager processes")
	<-time.After(d) // the kill point, not a wait for anything
	require.NoError(t, syscall.Kill(old[0], syscall.SIGKILL))
	require.Eventually(t, func() bool {
		now := managers(drSite)
		return len(now) == 1 && !slices.Contains(old, now[0])
	}, wait, tick, "dev did not start the manager again")
}

// managers lists the manager processes of the primary or of the dr-site
// (whose CSI socket lies in DATA/dr-site).
func managers(drSite bool) []int {
	var out []int
	for _, pid := range dev.Procs("cairn manager") {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if strings.Contains(string(b), filepath.Join(dev.DataDir, "dr-site")+"/") == drSite {
			out = append(out, pid)
		}
	}
	return out
}

// drActivation backs snap up to the DR target, follows it with a DR
// volume in the dr-site and activates it with a kill of the dr-site's
// manager; once active and its claim bound, the DR volume, claim, PV and
// volume are deleted and must leave nothing behind.
func drActivation(t *testing.T, vol, snap string, step func(string, func(), func(*assert.CollectT))) {
	t.Helper()
	b := &v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: vol + "-dr"}, Spec: v1.BackupSpec{VolumeName: vol, SnapshotName: snap, BackupTargetRef: "fault-mgr-dr"}}
	require.NoError(t, k8s.Create(bg, b))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKeyFromObject(b), b))
		assert.Equal(c, "Completed", b.Status.State, "%v", b.Status.Conditions)
	}, wait, tick)
	require.NoError(t, k8s.Delete(bg, b)) // deletePolicy Retain: the backup stays in the target
	drv := &v1.DisasterRecoveryVolume{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: vol}, Spec: v1.DisasterRecoveryVolumeSpec{
		BackupTargetRef: "fault-mgr-dr", SourceVolume: vol, PolicyRef: "fault-mgr-dr", Claim: v1.ClaimTemplate{Name: vol}}}
	require.NoError(t, drK8s.Create(bg, drv))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, drK8s.Get(bg, client.ObjectKeyFromObject(drv), drv))
		assert.Equal(c, v1.DRStandby, drv.Status.Phase, "%v", drv.Status.Conditions)
	}, wait, tick)
	pvc := &corev1.PersistentVolumeClaim{}
	step("DR activation", func() {
		p := client.MergeFrom(drv.DeepCopy())
		drv.Spec.Activate = true
		require.NoError(t, drK8s.Patch(bg, drv, p))
	}, func(c *assert.CollectT) {
		assert.NoError(c, drK8s.Get(bg, client.ObjectKeyFromObject(drv), drv))
		assert.Equal(c, v1.DRActive, drv.Status.Phase, "%v", drv.Status.Conditions)
		assert.True(c, meta.IsStatusConditionTrue(drv.Status.Conditions, v1.ConditionReady))
		assert.NoError(c, drK8s.Get(bg, client.ObjectKey{Namespace: "default", Name: vol}, pvc))
		assert.Equal(c, corev1.ClaimBound, pvc.Status.Phase)
	})
	name := drv.Status.VolumeName
	require.NotEmpty(t, name)
	for _, o := range []client.Object{drv, pvc, &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvc.Spec.VolumeName}},
		&v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name}}} {
		require.NoError(t, client.IgnoreNotFound(drK8s.Delete(bg, o)))
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(drK8s.Get(bg, client.ObjectKey{Name: name}, &v1.Volume{})), "DR volume not deleted")
		assert.True(c, apierrors.IsNotFound(drK8s.Get(bg, client.ObjectKeyFromObject(drv), &v1.DisasterRecoveryVolume{})), "DisasterRecoveryVolume not deleted")
		assert.Empty(c, dev.Procs("--volume "+name), "processes left")
		dirs, _ := filepath.Glob(filepath.Join(dev.DataDir, "dr-site", "nodes", "*", "replicas", name+"-r-*"))
		assert.Empty(c, dirs, "replica directories left")
		assert.Empty(c, loopDevices(name), "loop devices left")
		assert.Empty(c, mounts(name), "mounts left")
	}, wait, tick)
}

func create(t *testing.T, c client.Client, o client.Object) {
	t.Helper()
	require.NoError(t, c.Create(bg, o))
	t.Cleanup(func() { _ = c.Delete(bg, o) })
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

// manifestsAll lists every backup manifest in the file target at dir.
func manifestsAll(t *testing.T, dir string) []string {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".manifest") {
			out = append(out, path)
		}
		return err
	})
	require.NoError(t, err)
	return out
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
