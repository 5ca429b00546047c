package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/replica"
)

// TestSnapshotAndBackup: snapshots of an attached volume (through its
// engine) and of a detached one (through an engine without a frontend that
// goes away after); a backup taken while fio writes with verify streams
// through a running replica process to versitygw under the volume's name,
// incrementally; it restores byte-exact into a new Volume via fromBackup;
// deleting a Backup with deletePolicy Delete deletes it from the target.
func TestSnapshotAndBackup(t *testing.T) {
	t.Parallel()
	srv := testutil.StartS3(t)
	newTarget(t, "e2e-s3", srv)
	createPolicy(t, "e2e-backup", "backup", 2)
	const vol = "e2e-bk"
	vols.Create(t, vol, "backup", "128Mi")
	dev := vols.Attach(t, vol, "dev-node-1", 2)
	region1.write(t, dev)

	// A backup while fio writes another region: the writer sees no error.
	done := make(chan struct{})
	go func() {
		defer close(done)
		region2.write(t, dev)
	}()
	b1 := createBackup(t, "e2e-bk-b1", vol, "", "Retain")
	b1Sum := snapshotSum(t, vol, "backup-"+b1.Name)
	<-done
	region1.verify(t, dev)
	region2.verify(t, dev)
	ls := exec.Command("aws", "--endpoint-url", srv.Endpoint, "s3", "ls", "--recursive", "s3://"+srv.Bucket+"/e2e/")
	ls.Env = srv.Env()
	out, err := ls.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), vol, "the target holds nothing under the volume's name")

	// Quiet now: a snapshot, then an incremental backup of it, restores
	// byte for byte.
	sum := deviceSum(t, dev)
	createSnapshot(t, "e2e-bk-s1", vol)
	b2 := createBackup(t, "e2e-bk-b2", vol, "e2e-bk-s1", "Delete")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, b2.Name, vols.Get(c, vol).Status.LastBackup)
	}, wait, tick)

	rdev := restoreVolume(t, "e2e-bk-restored", vol, b2.Status.BackupID, "dev-node-3")
	assert.Equal(t, sum, deviceSum(t, rdev), "the restored volume differs from the snapshot")
	// The backup taken under fio equals the snapshot it was taken from.
	rdev = restoreVolume(t, "e2e-bk-restored-b1", vol, b1.Status.BackupID, "dev-node-2")
	assert.Equal(t, b1Sum, deviceSum(t, rdev), "the backup taken under load differs from its snapshot")

	// Incremental: 4 MiB written, about 4 MiB uploaded.
	fioJob{offset: "64m", size: "4m"}.write(t, dev)
	b3Sum := deviceSum(t, dev)
	b3 := createBackup(t, "e2e-bk-b3", vol, "", "Retain")
	assert.Positive(t, b3.Status.UploadedBytes)
	assert.Less(t, b3.Status.UploadedBytes, int64(6<<20), "the backup is not incremental")

	// A detached volume's snapshot runs through an engine without a
	// frontend, which goes away afterwards.
	vols.Detach(t, vol, 2)
	createSnapshot(t, "e2e-bk-s2", vol)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, client.ObjectKey{Name: vol}, &v1.Engine{})), "the maintenance engine stays")
		assert.Empty(c, suite.Procs("--volume "+vol+" "), "a detached volume runs processes")
	}, wait, tick)
	assert.Equal(t, v1.VolumeDetached, vols.Get(t, vol).Status.State)

	// deletePolicy Delete removes the backup from the target.
	require.NoError(t, k8s.Delete(bg, b2))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, client.ObjectKey{Name: b2.Name}, &v1.Backup{})))
	}, wait, tick)
	credsFile := filepath.Join(t.TempDir(), "creds")
	require.NoError(t, os.WriteFile(credsFile, []byte("AWS_ACCESS_KEY_ID="+srv.AccessKey+"\nAWS_SECRET_ACCESS_KEY="+srv.SecretKey+"\n"), 0o600))
	out, err = exec.Command(cairnBin, "backup", "--target", srv.URL("e2e"), "--endpoint", srv.Endpoint, "--credentials-file", credsFile,
		"-o", "json", "list", "--volume", vol).CombinedOutput()
	require.NoError(t, err, "%s", out)
	var listed []struct{ ID string }
	require.NoError(t, json.Unmarshal(out, &listed), "%s", out)
	var ids []string
	for _, l := range listed {
		ids = append(ids, l.ID)
	}
	assert.ElementsMatch(t, []string{b1.Status.BackupID, b3.Status.BackupID}, ids, "deletePolicy Delete left the backup in the target")

	// A rebuilt cluster: the BackupTarget and every Backup object gone
	// (Retain keeps the data), the same BackupTarget applied again: the
	// backups reappear from the catalogue and one of them restores.
	require.NoError(t, k8s.Delete(bg, &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "e2e-s3"}}))
	for _, b := range []*v1.Backup{b1, b3} {
		require.NoError(t, k8s.Delete(bg, b))
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var list v1.BackupList
		assert.NoError(c, k8s.List(bg, &list))
		for _, b := range list.Items {
			assert.NotEqual(c, vol, b.Spec.VolumeName, "backup %s still there", b.Name)
		}
	}, wait, tick)
	newTarget(t, "e2e-s3", srv)
	var imported string
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var list v1.BackupList
		assert.NoError(c, k8s.List(bg, &list, client.MatchingLabels{v1.LabelBackupTarget: "e2e-s3"}))
		var got []string
		for _, b := range list.Items {
			if b.Spec.VolumeName == vol && b.Status.State == "Completed" {
				got = append(got, b.Spec.BackupID)
				if b.Spec.BackupID == b3.Status.BackupID {
					imported = b.Spec.BackupID
				}
			}
		}
		assert.ElementsMatch(c, []string{b1.Status.BackupID, b3.Status.BackupID}, got)
	}, wait, tick)
	rdev = restoreVolume(t, "e2e-bk-restored-b3", vol, imported, "dev-node-4")
	assert.Equal(t, b3Sum, deviceSum(t, rdev), "the imported backup does not restore to the volume's content")

	// The target unreachable: the backup is retried and says why; back
	// up, it completes.
	srv.Stop()
	retry := &v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: "e2e-bk-retry"}, Spec: v1.BackupSpec{
		VolumeName: vol, BackupTargetRef: "e2e-s3", DeletePolicy: "Retain"}}
	require.NoError(t, k8s.Create(bg, retry))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: retry.Name}, retry))
		cond := meta.FindStatusCondition(retry.Status.Conditions, v1.ConditionReconciling)
		if assert.NotNil(c, cond, "no Reconciling condition while the target is down") {
			assert.Equal(c, "Retrying", cond.Reason)
			assert.NotEmpty(c, cond.Message)
		}
		assert.NotEqual(c, "Completed", retry.Status.State)
	}, wait, tick)
	srv.Restart()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: retry.Name}, retry))
		assert.Equal(c, "Completed", retry.Status.State, "%v", retry.Status.Conditions)
	}, wait, tick)

	requireHidden(t, srv.SecretKey, "the S3 secret key", suite.Procs())
}

// restoreVolume creates a two-replica volume from backup id of vol in
// e2e-s3, waits for the restore and attaches it on node.
func restoreVolume(t *testing.T, name, vol, id, node string) string {
	t.Helper()
	restored := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "backup"}}}
	restored.Spec.Size = resource.MustParse("128Mi")
	restored.Spec.FromBackup = &v1.BackupSource{BackupTargetRef: "e2e-s3", Volume: vol, Backup: id}
	require.NoError(t, k8s.Create(bg, restored))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, meta.IsStatusConditionTrue(vols.Get(c, name).Status.Conditions, v1.ConditionRestored))
	}, wait, tick)
	return vols.Attach(t, name, node, 2)
}

// snapshotSum reads a snapshot of vol through one of its running replica
// processes (with the volume's token, as the node agent does) and hashes it.
func snapshotSum(t *testing.T, vol, snapshot string) [32]byte {
	t.Helper()
	sec := &corev1.Secret{}
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Namespace: v1.SystemNamespace, Name: v1.TokenSecretName(vol)}, sec))
	reps := replicaObjects(t, vol)
	require.NotEmpty(t, reps)
	c, err := replica.Dial(bg, reps[0].Status.Address, string(sec.Data[v1.TokenKey]))
	require.NoError(t, err)
	defer c.Close()
	snap, err := replica.NewRemote(bg, c).OpenSnapshot(snapshot)
	require.NoError(t, err)
	data := make([]byte, snap.Size())
	_, err = snap.ReadAt(data, 0)
	require.NoError(t, err)
	return sha256.Sum256(data)
}

// newTarget creates a BackupTarget named name on srv, under prefix e2e,
// with its credentials Secret.
func newTarget(t *testing.T, name string, srv *testutil.S3Server) *v1.BackupTarget {
	t.Helper()
	creds := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: v1.SystemNamespace, Name: name + "-creds"},
		StringData: map[string]string{targets.SecretAccessKeyID: srv.AccessKey, targets.SecretSecretAccessKey: srv.SecretKey}}
	require.NoError(t, client.IgnoreAlreadyExists(k8s.Create(bg, creds)))
	bt := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.BackupTargetSpec{
		URL: srv.URL("e2e"), Endpoint: srv.Endpoint, Region: srv.Region,
		CredentialsSecretRef: &v1.SecretReference{Namespace: v1.SystemNamespace, Name: creds.Name},
	}}
	require.NoError(t, k8s.Create(bg, bt))
	return bt
}

// createBackup creates a Backup and waits until it is Completed.
func createBackup(t *testing.T, name, vol, snapshot, deletePolicy string) *v1.Backup {
	t.Helper()
	b := &v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.BackupSpec{
		VolumeName: vol, SnapshotName: snapshot, BackupTargetRef: "e2e-s3", DeletePolicy: deletePolicy}}
	require.NoError(t, k8s.Create(bg, b))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: name}, b))
		assert.Equal(c, "Completed", b.Status.State, "%v", b.Status.Conditions)
		assert.NotEmpty(c, b.Status.BackupID)
		assert.True(c, current(c, b), "kstatus not Current")
	}, wait, tick)
	return b
}

// createSnapshot creates a Snapshot and waits until it is ready.
func createSnapshot(t *testing.T, name, vol string) {
	t.Helper()
	s := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.SnapshotSpec{VolumeName: vol}}
	require.NoError(t, k8s.Create(bg, s))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: name}, s))
		assert.True(c, s.Status.ReadyToUse, "%v", s.Status.Conditions)
		assert.True(c, current(c, s), "kstatus not Current")
	}, wait, tick)
}

// deviceSum hashes the whole device, read past the page cache.
func deviceSum(t *testing.T, dev string) [32]byte {
	t.Helper()
	return sha256.Sum256(readDevice(t, dev))
}

// readDevice reads the whole device with O_DIRECT (past the page cache).
func readDevice(t *testing.T, dev string) []byte {
	t.Helper()
	data, err := exec.Command("dd", "if="+dev, "iflag=direct", "bs=1M", "status=none").Output()
	require.NoError(t, err)
	return data
}
