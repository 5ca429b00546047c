package dr

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/dr"
	"github.com/cairnstore/cairn/internal/testutil"
)

var bg = context.Background()

const wait, tick = 4 * time.Minute, 250 * time.Millisecond

const (
	mib     = 1 << 20
	volSize = 256 * mib
	block   = 2 * mib // the target's block size
)

// TestFollowAndFailover: site A writes a volume through its block device
// and backs it up; site B's DisasterRecoveryVolume restores it into a
// standby and then applies each newer backup writing only the blocks that
// changed (2 MiB of a 256 MiB volume), also after B's manager and node
// agents restarted and after A deleted the backup B was based on; a backup
// B is about to apply is pinned, so A's deletion of it waits until B holds
// it; lag is the age of the held backup. Activated (B's manager restarting
// meanwhile), B binds its claim to a volume whose bytes equal A's device
// at its last backup.
func TestFollowAndFailover(t *testing.T) {
	setup(t)
	const src = "pg-a"
	vol := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: src}}
	vol.Spec.Size = *resource.NewQuantity(volSize, resource.BinarySI)
	vol.Spec.PolicyRef = "gold"
	require.NoError(t, siteA.k8s.Create(bg, vol))
	dev := attach(t, siteA, src, "dev-node-1")
	writeRandom(t, dev, 0, 32*mib)
	b1, _ := backup(t, src, "pg-a-1")

	drv := &v1.DisasterRecoveryVolume{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "pg"}}
	drv.Spec = v1.DisasterRecoveryVolumeSpec{BackupTargetRef: "shared", SourceVolume: src, PolicyRef: "gold",
		PollInterval: &metav1.Duration{Duration: 5 * time.Second}, Claim: v1.ClaimTemplate{Name: "pg-data"}}
	require.NoError(t, siteB.k8s.Create(bg, drv))
	standby := dr.VolumeName("default", "pg")
	waitHeld(t, drv, b1)

	t.Run("incremental", func(t *testing.T) {
		writeRandom(t, dev, 100*mib, block)
		b2, created := backup(t, src, "pg-a-2")
		st := waitHeld(t, drv, b2)
		requireIncremental(t, standby, b1, b2)
		// The backup's creation in the target lies between the Backup
		// object's creation and completion (whole seconds in status).
		got := st.LastRestoredBackupTime.Time
		require.False(t, got.Before(created[0].Truncate(time.Second)) || got.After(created[1]), "lastRestoredBackupTime %v within the backup's run %v", got, created)
		require.LessOrEqual(t, st.Lag.Duration, time.Since(got)+time.Second, "lag counts from the backup's creation")
		require.GreaterOrEqual(t, st.Lag.Duration, time.Duration(0))
		require.Contains(t, metrics(t), `cairn_dr_lag_seconds{name="pg",namespace="default"}`)
	})

	t.Run("restart of B's manager and agents", func(t *testing.T) {
		restartManagerB(t)
		for n := range testutil.ReplicaNodes(siteB.vols.Get(t, standby)) {
			restartAgent(t, siteB, n)
		}
		prev := getDRV(t, drv).Status.LastRestoredBackup
		writeRandom(t, dev, 150*mib, block)
		b3, _ := backup(t, src, "pg-a-3")
		waitHeld(t, drv, b3)
		requireIncremental(t, standby, prev, b3)
	})

	t.Run("A deletes the backup B holds", func(t *testing.T) {
		held := getDRV(t, drv).Status.LastRestoredBackup
		var list v1.BackupList
		require.NoError(t, siteA.k8s.List(bg, &list))
		for _, b := range list.Items {
			if b.Status.BackupID == held {
				require.NoError(t, siteA.k8s.Delete(bg, &b))
				require.EventuallyWithT(t, func(c *assert.CollectT) {
					err := siteA.k8s.Get(bg, client.ObjectKeyFromObject(&b), &v1.Backup{})
					assert.True(c, err != nil && strings.Contains(err.Error(), "not found"), "backup %s still there", b.Name)
				}, wait, tick)
			}
		}
		writeRandom(t, dev, 200*mib, block)
		b4, _ := backup(t, src, "pg-a-4")
		waitHeld(t, drv, b4)
		requireIncremental(t, standby, held, b4)
	})

	t.Run("pinned while B needs it", func(t *testing.T) {
		prev := getDRV(t, drv).Status.LastRestoredBackup
		argv := map[string][]string{}
		for n := range testutil.ReplicaNodes(siteB.vols.Get(t, standby)) {
			argv[n] = stopAgent(t, siteB, n)
		}
		writeRandom(t, dev, 220*mib, block)
		pinned, _ := backup(t, src, "pg-a-pinned")
		// B points its standby at the backup (pinning it first) but cannot
		// apply it while its agents are down.
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.Equal(c, pinned, siteB.vols.Get(c, standby).Spec.FromBackup.Backup)
		}, wait, tick)
		// A's retention deletes it: the target keeps it while pinned.
		require.NoError(t, siteA.k8s.Delete(bg, &v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: "pg-a-pinned"}}))
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			var evs eventsv1.EventList
			assert.NoError(c, siteA.k8s.List(bg, &evs))
			found := false
			for _, e := range evs.Items {
				found = found || (e.Regarding.Name == "pg-a-pinned" && e.Reason == "Pinned")
			}
			assert.True(c, found, "no Pinned event for the deleted backup")
		}, wait, tick)
		for n, a := range argv {
			startAgent(t, siteB, n, a)
		}
		waitHeld(t, drv, pinned)
		requireIncremental(t, standby, prev, pinned)
		// B released its pin: A's deletion completes.
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			err := siteA.k8s.Get(bg, client.ObjectKey{Name: "pg-a-pinned"}, &v1.Backup{})
			assert.True(c, err != nil && strings.Contains(err.Error(), "not found"), "backup still there: %v", err)
		}, wait, tick)
	})

	// The last backup A took, and A's device at that point.
	writeRandom(t, dev, 60*mib, block)
	last, _ := backup(t, src, "pg-a-5")
	want := sha256.Sum256(readDevice(t, dev))
	waitHeld(t, drv, last)
	writeRandom(t, dev, 70*mib, block) // after the last backup: lost on failover

	patchDRV(t, drv, func(d *v1.DisasterRecoveryVolume) { d.Spec.Activate = true })
	// B's manager restarts during the activation: the new one resumes it.
	restartManagerB(t)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		d := getDRV(c, drv)
		assert.Equal(c, v1.DRActive, d.Status.Phase)
		assert.True(c, meta.IsStatusConditionTrue(d.Status.Conditions, v1.ConditionReady))
		assert.Equal(c, last, d.Status.LastRestoredBackup)
		pvc := &corev1.PersistentVolumeClaim{}
		assert.NoError(c, siteB.k8s.Get(bg, client.ObjectKey{Namespace: "default", Name: "pg-data"}, pvc))
		assert.Equal(c, corev1.ClaimBound, pvc.Status.Phase)
		assert.Equal(c, standby, pvc.Spec.VolumeName)
	}, wait, tick)
	bdev := attach(t, siteB, standby, "dev-node-2")
	require.Equal(t, want, sha256.Sum256(readDevice(t, bdev)), "B's volume holds A's data at its last backup")
	require.NotContains(t, metrics(t), `cairn_dr_lag_seconds{name="pg",`, "an active volume has no lag")
}

// metrics reads B's manager's metrics.
func metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(metricsB)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(body)
}

// setup creates, once in each site, the target "shared" (A's, read-only
// in B), the target "failback" (B's, read-only in A) and the policy gold.
func setup(t *testing.T) {
	t.Helper()
	for _, s := range []*site{siteA, siteB} {
		target(t, s, "shared", "e2e-dr", s == siteB)
		target(t, s, "failback", "e2e-dr-back", s == siteA)
		p := &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: "gold"}}
		p.Spec.Replicas = 2
		p.Spec.ReplenishWait = &metav1.Duration{Duration: time.Minute}
		require.NoError(t, client.IgnoreAlreadyExists(s.k8s.Create(bg, p)))
	}
}

// target creates BackupTarget name on the dev S3 bucket under prefix
// (credentials in the Secret dev keeps in both sites).
func target(t *testing.T, s *site, name, prefix string, readOnly bool) {
	t.Helper()
	bt := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.BackupTargetSpec{
		URL: "s3://cairn-dev/" + prefix, Endpoint: s3Endpoint, Region: "us-east-1", ReadOnly: readOnly,
		CredentialsSecretRef: &v1.SecretReference{Namespace: v1.SystemNamespace, Name: "cairn-dev-s3"},
	}}
	require.NoError(t, client.IgnoreAlreadyExists(s.k8s.Create(bg, bt)))
}

// attach sets spec.nodeID and waits for the block device.
func attach(t *testing.T, s *site, name, node string) string {
	t.Helper()
	s.vols.Patch(t, name, func(v *v1.Volume) { v.Spec.NodeID = node })
	var v *v1.Volume
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v = s.vols.Get(c, name)
		assert.Equal(c, v1.VolumeAttached, v.Status.State)
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
		assert.NotEmpty(c, v.Status.Endpoint)
	}, wait, tick)
	st, err := os.Stat(v.Status.Endpoint)
	require.NoError(t, err)
	require.NotZero(t, st.Mode()&os.ModeDevice)
	return v.Status.Endpoint
}

// writeRandom writes n random bytes at off (whole MiB) through the
// device, with O_DIRECT and a final fsync.
func writeRandom(t *testing.T, dev string, off, n int64) {
	t.Helper()
	out, err := exec.Command("dd", "if=/dev/urandom", "of="+dev, "bs=1M", fmt.Sprintf("seek=%d", off/mib), fmt.Sprintf("count=%d", n/mib),
		"oflag=direct", "conv=notrunc,fsync", "status=none").CombinedOutput()
	require.NoError(t, err, "%s", out)
}

// readDevice reads the whole device with O_DIRECT (past the page cache).
func readDevice(t *testing.T, dev string) []byte {
	t.Helper()
	data, err := exec.Command("dd", "if="+dev, "iflag=direct", "bs=1M", "status=none").Output()
	require.NoError(t, err)
	return data
}

// backup takes a Backup of vol on A to "shared" (deletePolicy Delete, as a
// schedule's are), waits for it and returns its id and when it started and
// completed.
func backup(t *testing.T, vol, name string) (string, [2]time.Time) {
	t.Helper()
	return backupAt(t, siteA, "shared", vol, name)
}

func backupAt(t *testing.T, s *site, target, vol, name string) (string, [2]time.Time) {
	t.Helper()
	b := &v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.BackupSpec{VolumeName: vol, BackupTargetRef: v1.ObjectName(target), DeletePolicy: "Delete"}}
	require.NoError(t, s.k8s.Create(bg, b))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, s.k8s.Get(bg, client.ObjectKey{Name: name}, b))
		assert.Equal(c, "Completed", b.Status.State, "%v", b.Status.Conditions)
		assert.NotEmpty(c, b.Status.BackupID)
		assert.NotNil(c, b.Status.CreationTime)
		assert.NotNil(c, b.Status.CompletionTime)
	}, wait, tick)
	return b.Status.BackupID, [2]time.Time{b.Status.CreationTime.Time, b.Status.CompletionTime.Time}
}

func getDRV(c assert.TestingT, drv *v1.DisasterRecoveryVolume) *v1.DisasterRecoveryVolume {
	return getDRVAt(c, siteB, drv)
}

func getDRVAt(c assert.TestingT, s *site, drv *v1.DisasterRecoveryVolume) *v1.DisasterRecoveryVolume {
	out := &v1.DisasterRecoveryVolume{}
	assert.NoError(c, s.k8s.Get(bg, client.ObjectKeyFromObject(drv), out))
	return out
}

func patchDRV(t *testing.T, drv *v1.DisasterRecoveryVolume, mutate func(*v1.DisasterRecoveryVolume)) {
	t.Helper()
	testutil.Patch(t, siteB.k8s, drv.DeepCopy(), mutate)
}

// waitHeld waits until B reports its standby holds backup id, Ready.
func waitHeld(t *testing.T, drv *v1.DisasterRecoveryVolume, id string) v1.DisasterRecoveryVolumeStatus {
	t.Helper()
	var st v1.DisasterRecoveryVolumeStatus
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		st = getDRV(c, drv).Status
		assert.Equal(c, id, st.LastRestoredBackup)
		assert.Equal(c, v1.DRStandby, st.Phase)
		assert.True(c, meta.IsStatusConditionTrue(st.Conditions, v1.ConditionReady), "%v", st.Conditions)
	}, wait, tick)
	return st
}

// requireIncremental checks each standby replica applied `to` over `from`
// writing one changed block, not the volume.
func requireIncremental(t *testing.T, vol, from, to string) {
	t.Helper()
	var list v1.ReplicaList
	require.NoError(t, siteB.k8s.List(bg, &list, client.MatchingLabels{v1.LabelVolume: vol}))
	require.Len(t, list.Items, 2)
	for _, rep := range list.Items {
		lr := rep.Status.LastRestore
		require.NotNil(t, lr, "replica %s", rep.Name)
		require.Equal(t, to, lr.Backup)
		require.Equal(t, from, lr.Since)
		require.True(t, lr.Incremental)
		require.Equal(t, int64(block), lr.BytesWritten, "replica %s writes the changed block only (volume %d bytes)", rep.Name, volSize)
	}
}

// restartManagerB stops B's manager (SIGTERM) and waits for cairn dev,
// which supervises it, to start a new one.
func restartManagerB(t *testing.T) {
	t.Helper()
	pids := procs("manager", "--webhook-cert-dir")
	require.Len(t, pids, 1, "B's manager")
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGTERM))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		now := procs("manager", "--webhook-cert-dir")
		assert.Len(c, now, 1)
		assert.NotContains(c, now, pids[0])
	}, wait, tick)
}

// restartAgent stops a node agent of site s (SIGTERM) and starts it again
// as dev started it.
func restartAgent(t *testing.T, s *site, node string) {
	t.Helper()
	startAgent(t, s, node, stopAgent(t, s, node))
}

// stopAgent stops a node agent of site s and returns its command line.
func stopAgent(t *testing.T, s *site, node string) []string {
	t.Helper()
	dir := filepath.Join(s.dir, "nodes", node)
	pids := procs("node", "--name "+node+" ", "--data-dir "+dir+" ")
	require.Len(t, pids, 1, "agent %s of site %s", node, s.name)
	argv, err := testutil.Cmdline(pids[0])
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGTERM))
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Empty(c, procs("node", "--name "+node+" ", "--data-dir "+dir+" ")) }, wait, tick)
	return argv
}

func startAgent(t *testing.T, s *site, node string, argv []string) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(s.dir, "nodes", node, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	suite.Started(cmd)
}

// procs lists live processes of this suite (their command line names its
// data directory or binary) whose command line contains every word.
func procs(words ...string) []int {
	return testutil.Procs(append(words, cairnBin+" ")...)
}

// TestSwitchoverAndFailback: a planned switchover loses nothing: A's
// volume is fenced (detached), a final backup taken, and B activates from
// exactly that backup with status.rpo 0 and A's last writes on its device.
// Failback: B backs its now-live volume up to its own target under its
// own name; A gets a DisasterRecoveryVolume for it, activates, and holds
// B's data (including what was written on B after the switchover).
func TestSwitchoverAndFailback(t *testing.T) {
	setup(t)
	const src = "sw-a"
	vol := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: src}}
	vol.Spec.Size = *resource.NewQuantity(64*mib, resource.BinarySI)
	vol.Spec.PolicyRef = "gold"
	require.NoError(t, siteA.k8s.Create(bg, vol))
	dev := attach(t, siteA, src, "dev-node-2")
	writeRandom(t, dev, 0, 8*mib)
	first, _ := backup(t, src, "sw-a-1")

	drv := &v1.DisasterRecoveryVolume{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "sw"}}
	drv.Spec = v1.DisasterRecoveryVolumeSpec{BackupTargetRef: "shared", SourceVolume: src, PolicyRef: "gold",
		PollInterval: &metav1.Duration{Duration: 5 * time.Second}, Claim: v1.ClaimTemplate{Name: "sw-data"}}
	require.NoError(t, siteB.k8s.Create(bg, drv))
	waitHeld(t, drv, first)

	// The last writes before fencing, then the fence and the final backup.
	writeRandom(t, dev, 30*mib, 4*mib)
	want := sha256.Sum256(readDevice(t, dev))
	detachVolume(t, siteA, src)
	final, _ := backup(t, src, "sw-a-final")
	patchDRV(t, drv, func(d *v1.DisasterRecoveryVolume) { d.Spec.Activate = true })
	standby := dr.VolumeName("default", "sw")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		d := getDRV(c, drv)
		assert.Equal(c, v1.DRActive, d.Status.Phase)
		assert.Equal(c, final, d.Status.LastRestoredBackup)
		if assert.NotNil(c, d.Status.RPO) {
			assert.Zero(c, d.Status.RPO.Duration, "a fenced final backup loses nothing")
		}
	}, wait, tick)
	bdev := attach(t, siteB, standby, "dev-node-1")
	require.Equal(t, want, sha256.Sum256(readDevice(t, bdev)), "the writes before fencing are on the new primary")

	// Failback: B writes, fences and backs up to its own target; A follows
	// it with a DisasterRecoveryVolume activated at once.
	writeRandom(t, bdev, 50*mib, 2*mib)
	wantBack := sha256.Sum256(readDevice(t, bdev))
	detachVolume(t, siteB, standby)
	back, _ := backupAt(t, siteB, "failback", standby, "sw-b-final")
	adrv := &v1.DisasterRecoveryVolume{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "sw-back"}}
	adrv.Spec = v1.DisasterRecoveryVolumeSpec{BackupTargetRef: "failback", SourceVolume: standby, PolicyRef: "gold", Activate: true,
		PollInterval: &metav1.Duration{Duration: 5 * time.Second}, Claim: v1.ClaimTemplate{Name: "sw-data"}}
	require.NoError(t, siteA.k8s.Create(bg, adrv))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		d := getDRVAt(c, siteA, adrv)
		assert.Equal(c, v1.DRActive, d.Status.Phase)
		assert.Equal(c, back, d.Status.LastRestoredBackup)
		if assert.NotNil(c, d.Status.RPO) {
			assert.Zero(c, d.Status.RPO.Duration)
		}
		pvc := &corev1.PersistentVolumeClaim{}
		assert.NoError(c, siteA.k8s.Get(bg, client.ObjectKey{Namespace: "default", Name: "sw-data"}, pvc))
		assert.Equal(c, corev1.ClaimBound, pvc.Status.Phase)
	}, wait, tick)
	adev := attach(t, siteA, dr.VolumeName("default", "sw-back"), "dev-node-1")
	require.Equal(t, wantBack, sha256.Sum256(readDevice(t, adev)), "A holds B's data after failback")
}

// detachVolume clears spec.nodeID and waits until the volume is detached.
func detachVolume(t *testing.T, s *site, name string) {
	t.Helper()
	s.vols.Patch(t, name, func(v *v1.Volume) { v.Spec.NodeID = "" })
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, v1.VolumeDetached, s.vols.Get(c, name).Status.State)
	}, wait, tick)
}
