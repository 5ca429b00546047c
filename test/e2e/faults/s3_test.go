//go:build faults

package faults

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestBackupToDevS3 backs a volume up to dev's S3 server (versitygw on
// the host's loopback, reached by the agents in their namespaces through
// dev's forwarder on the bridge) and deletes the backup again: the
// manifest appears in versitygw's data directory and goes with the Backup.
func TestBackupToDevS3(t *testing.T) {
	const vol = "fault-s3"
	line := dev.Banner["S3 target"]
	require.True(t, strings.HasPrefix(line, "http://"), "dev runs no S3 server: %q (run `make tools`)", line)
	target := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: vol}, Spec: v1.BackupTargetSpec{
		URL: "s3://cairn-dev/" + vol, Endpoint: strings.Fields(line)[0], Region: "us-east-1",
		CredentialsSecretRef: &v1.SecretReference{Namespace: v1.SystemNamespace, Name: "cairn-dev-s3"}}}
	require.NoError(t, k8s.Create(bg, target))
	t.Cleanup(func() { _ = k8s.Delete(bg, target) })
	newVolume(t, vol, "64Mi", 2, time.Hour)
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 2)
	blk := vols.Attach(t, vol, "dev-node-1", 2)
	data := region{offset: 0, size: 16 << 20}
	require.NoError(t, fio(t.TempDir(), data.args(blk)))

	b := &v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: vol}, Spec: v1.BackupSpec{VolumeName: vol, BackupTargetRef: vol, DeletePolicy: "Delete"}}
	require.NoError(t, k8s.Create(bg, b))
	t.Cleanup(func() { _ = k8s.Delete(bg, b) })
	took := waitFor(t, "the backup to S3 did not complete", func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKeyFromObject(b), b))
		assert.Equal(c, "Completed", b.Status.State, "%v", b.Status.Conditions)
	})
	bucket := filepath.Join(dev.DataDir, "s3", "data", "cairn-dev", vol)
	_, err := os.Stat(bucket)
	require.NoError(t, err, "versitygw holds no object under the target's prefix")
	require.Len(t, manifests(t, bucket, vol), 1)

	require.NoError(t, k8s.Delete(bg, b))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, client.ObjectKeyFromObject(b), &v1.Backup{})), "backup not deleted")
		assert.Empty(c, manifests(t, bucket, vol), "the deleted backup is still in the bucket")
	}, wait, tick)
	t.Logf("backup to S3 completed in %v", took.Round(time.Millisecond))
	record(t, figures{})
}
