package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
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
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/dr"
	"github.com/cairnstore/cairn/engine/backupstore"
	"github.com/cairnstore/cairn/internal/testutil"
)

// drSource is a source volume "written at another site": a raw image
// backed up with `cairn backup create --file` into a file target, each
// backup after changing one 2 MiB block of it.
type drSource struct {
	target, image, volume string
}

func (s drSource) run(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(cairnBin, append([]string{"backup", "--target", "file://" + s.target, "-o", "json"}, args...)...).Output()
	require.NoError(t, err, "cairn backup %v: %s", args, out)
	return out
}

// backup changes block `block` of the image (unless negative), backs it up
// and returns the backup and the image's SHA-256 at that point.
func (s drSource) backup(t *testing.T, block int) (backupstore.BackupInfo, [32]byte) {
	t.Helper()
	if block >= 0 {
		f, err := os.OpenFile(s.image, os.O_WRONLY, 0)
		require.NoError(t, err)
		buf := make([]byte, 2*mib)
		_, _ = rand.Read(buf)
		_, err = f.WriteAt(buf, int64(block)*2*mib)
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
	var info backupstore.BackupInfo
	require.NoError(t, json.Unmarshal(s.run(t, "create", "--volume", s.volume, "--file", s.image), &info))
	data, err := os.ReadFile(s.image)
	require.NoError(t, err)
	return info, sha256.Sum256(data)
}

// TestDisasterRecoveryVolume: a DisasterRecoveryVolume restores the newest
// backup of its source into a standby volume, then applies each newer
// backup writing only the changed blocks (also after its node agents
// restart, and after the source deleted the backup it holds), reports lag
// from the backup's creation; activated while the newest backup is
// unreadable, it goes live from the one before, says so, and binds its
// claim to a volume holding exactly that backup's data.
//
// Not parallel: it restarts node agents.
func TestDisasterRecoveryVolume(t *testing.T) {
	src := drSource{target: filepath.Join(dataDir, "e2e-dr-backups"), volume: "dr-src"}
	require.NoError(t, os.MkdirAll(src.target, 0o700))
	src.image, _ = makeImage(t, 64*mib)
	b1, _ := src.backup(t, -1)

	bt := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "e2e-dr"}}
	bt.Spec.URL = "file://" + src.target
	require.NoError(t, k8s.Create(bg, bt))
	createPolicy(t, "e2e-dr", "dr", 2)
	drv := &v1.DisasterRecoveryVolume{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "pg"}}
	drv.Spec = v1.DisasterRecoveryVolumeSpec{BackupTargetRef: "e2e-dr", SourceVolume: src.volume, PolicyRef: "e2e-dr",
		PollInterval: &metav1.Duration{Duration: 5 * time.Second}, Claim: v1.ClaimTemplate{Name: "pg-data"}}
	require.NoError(t, k8s.Create(bg, drv))
	vol := dr.VolumeName("default", "pg")

	waitHeld(t, drv, b1)
	v := vols.Get(t, vol)
	require.True(t, v.Spec.Standby)
	require.Empty(t, v.Status.AttachedNode)

	t.Run("incremental update", func(t *testing.T) {
		b2, _ := src.backup(t, 10)
		st := waitHeld(t, drv, b2)
		requireIncremental(t, vol, b1.ID, b2.ID)
		require.True(t, st.LastRestoredBackupTime.Time.Equal(b2.Created.Truncate(time.Second)) || st.LastRestoredBackupTime.Time.Equal(b2.Created),
			"lastRestoredBackupTime %v is the backup's creation %v", st.LastRestoredBackupTime, b2.Created)
		require.GreaterOrEqual(t, st.Lag.Duration, time.Duration(0))
		require.LessOrEqual(t, st.Lag.Duration, time.Since(b2.Created)+time.Second, "lag is measured from the backup's creation")
	})

	t.Run("after node agent restarts", func(t *testing.T) {
		for n := range testutil.ReplicaNodes(vols.Get(t, vol)) {
			stopAgent(t, n)
			restartAgent(t, n, "")
		}
		prev := getDRV(t, drv).Status.LastRestoredBackup
		b3, _ := src.backup(t, 20)
		waitHeld(t, drv, b3)
		requireIncremental(t, vol, prev, b3.ID)
	})

	t.Run("base deleted by the source", func(t *testing.T) {
		held := getDRV(t, drv).Status.LastRestoredBackup
		src.run(t, "delete", "--volume", src.volume, "--backup", held)
		b4, _ := src.backup(t, 30)
		waitHeld(t, drv, b4)
		requireIncremental(t, vol, held, b4.ID)
	})

	// The newest backup is unreadable (its manifest damaged): activation
	// uses the one before.
	good, goodSum := src.backup(t, 5)
	waitHeld(t, drv, good)
	bad, _ := src.backup(t, 6)
	manifest := filepath.Join(src.target, "volumes", src.volume, "backups", bad.ID+".manifest")
	require.NoError(t, os.WriteFile(manifest, []byte("damaged"), 0o600))
	patchDRV(t, drv, func(d *v1.DisasterRecoveryVolume) { d.Spec.Activate = true })

	var pvc corev1.PersistentVolumeClaim
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		d := getDRV(c, drv)
		assert.Equal(c, v1.DRActive, d.Status.Phase)
		assert.True(c, meta.IsStatusConditionTrue(d.Status.Conditions, v1.ConditionReady))
		assert.Equal(c, good.ID, d.Status.LastRestoredBackup)
		if cond := meta.FindStatusCondition(d.Status.Conditions, dr.ConditionBackupSkipped); assert.NotNil(c, cond, "conditions %v, volume annotations %v", d.Status.Conditions, vols.Get(c, vol).Annotations) {
			assert.Contains(c, cond.Message, bad.ID)
		}
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Namespace: "default", Name: "pg-data"}, &pvc))
		assert.Equal(c, corev1.ClaimBound, pvc.Status.Phase)
	}, wait, tick)
	require.Equal(t, vol, pvc.Spec.VolumeName)
	var pv corev1.PersistentVolume
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Name: vol}, &pv))
	require.Equal(t, "csi.cairn.dev", pv.Spec.CSI.Driver)
	require.Equal(t, vol, pv.Spec.CSI.VolumeHandle)
	require.False(t, vols.Get(t, vol).Spec.Standby)

	dev := vols.Attach(t, vol, "dev-node-1", 2)
	require.Equal(t, goodSum, sha256.Sum256(readDevice(t, dev)), "the activated volume holds the backup it activated from")
	vols.Detach(t, vol, 2)
}

func getDRV(c assert.TestingT, drv *v1.DisasterRecoveryVolume) *v1.DisasterRecoveryVolume {
	out := &v1.DisasterRecoveryVolume{}
	assert.NoError(c, k8s.Get(bg, client.ObjectKeyFromObject(drv), out))
	return out
}

func patchDRV(t *testing.T, drv *v1.DisasterRecoveryVolume, mutate func(*v1.DisasterRecoveryVolume)) {
	t.Helper()
	testutil.Patch(t, k8s, drv.DeepCopy(), mutate)
}

// waitHeld waits until the DR volume reports the standby holds b, Ready.
func waitHeld(t *testing.T, drv *v1.DisasterRecoveryVolume, b backupstore.BackupInfo) v1.DisasterRecoveryVolumeStatus {
	t.Helper()
	var st v1.DisasterRecoveryVolumeStatus
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		st = getDRV(c, drv).Status
		assert.Equal(c, b.ID, st.LastRestoredBackup)
		assert.Equal(c, v1.DRStandby, st.Phase)
		assert.True(c, meta.IsStatusConditionTrue(st.Conditions, v1.ConditionReady), "%v", st.Conditions)
		assert.True(c, current(c, getDRV(c, drv)))
	}, wait, tick)
	return st
}

// requireIncremental checks every replica of the standby applied `to` over
// `from` writing one changed 2 MiB block, not the 64 MiB volume.
func requireIncremental(t *testing.T, vol, from, to string) {
	t.Helper()
	reps := replicaObjects(t, vol)
	require.Len(t, reps, 2)
	for _, rep := range reps {
		lr := rep.Status.LastRestore
		require.NotNil(t, lr, "replica %s", rep.Name)
		require.Equal(t, to, lr.Backup)
		require.Equal(t, from, lr.Since)
		require.True(t, lr.Incremental)
		require.Equal(t, int64(2*mib), lr.BytesWritten, "replica %s wrote the changed block only", rep.Name)
		require.True(t, strings.HasPrefix(rep.Spec.Restore.Backup, to))
	}
}

// stopAgent stops a node agent as its DaemonSet pod would be (SIGTERM) and
// waits until it exited.
func stopAgent(t *testing.T, node string) {
	t.Helper()
	agents := suite.Procs("node --name " + node + " ")
	require.Len(t, agents, 1, "agent of %s", node)
	require.NoError(t, syscall.Kill(agents[0], syscall.SIGTERM))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Empty(c, suite.Procs("node --name "+node+" "))
	}, wait, tick)
}
