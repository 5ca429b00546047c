package controllers_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/engine/backupstore"
	"github.com/cairnstore/cairn/internal/testutil"
)

// targetWait bounds how long a target may take to report: the
// controller's 30s probe bound plus a loaded machine's slack.
const targetWait = 60 * time.Second

// secret creates a Secret in cairn-system, deleted when the test ends.
func secret(t *testing.T, name string, data map[string]string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: v1.SystemNamespace, Name: name}, StringData: data}
	require.NoError(t, k8s.Create(bg, s))
	t.Cleanup(func() { _ = k8s.Delete(bg, s) })
	return s
}

func credsFor(srv *testutil.S3Server) map[string]string {
	return map[string]string{targets.SecretAccessKeyID: srv.AccessKey, targets.SecretSecretAccessKey: srv.SecretKey}
}

// newTarget creates a BackupTarget polling every 5s, deleted at the end.
func newTarget(t *testing.T, name, url, endpoint, creds string, mod ...func(*v1.BackupTarget)) *v1.BackupTarget {
	t.Helper()
	bt := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.BackupTargetSpec{
		URL: url, Endpoint: endpoint, Region: "us-east-1",
		CredentialsSecretRef: &v1.SecretReference{Namespace: v1.SystemNamespace, Name: creds},
		PollInterval:         &metav1.Duration{Duration: 5 * time.Second},
	}}
	for _, m := range mod {
		m(bt)
	}
	require.NoError(t, k8s.Create(bg, bt))
	t.Cleanup(func() {
		// The target first, so that its Backup objects are not imported again.
		_ = k8s.Delete(bg, bt)
		_ = k8s.DeleteAllOf(bg, &v1.Backup{}, client.MatchingLabels{v1.LabelBackupTarget: name})
	})
	return bt
}

func getTarget(t assert.TestingT, name string) *v1.BackupTarget {
	bt := &v1.BackupTarget{}
	assert.NoError(t, k8s.Get(bg, client.ObjectKey{Name: name}, bt))
	return bt
}

// openStore opens the store at prefix with the server's credentials.
func openStore(t *testing.T, srv *testutil.S3Server, prefix string, key []byte) *backupstore.Store {
	t.Helper()
	o := backupstore.Options{Key: key, LockWait: 20 * time.Second}
	o.Endpoint, o.Region, o.AccessKeyID, o.SecretAccessKey = srv.Endpoint, srv.Region, srv.AccessKey, srv.SecretKey
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	s, err := backupstore.Open(ctx, srv.URL(prefix), o)
	require.NoError(t, err)
	return s
}

// makeBackups stores n backups of each volume, each from a small image
// with one changed block, as a backup of a real volume would be.
func makeBackups(t *testing.T, s *backupstore.Store, vols []string, n int) map[string]backupstore.BackupInfo {
	t.Helper()
	out := map[string]backupstore.BackupInfo{}
	img := make([]byte, 1<<20)
	for _, v := range vols {
		for i := range n {
			_, _ = rand.Read(img[i*64<<10 : (i+1)*64<<10])
			info, err := s.CreateBackup(bg, backupstore.BackupOptions{Volume: v, Source: bytes.NewReader(img), BlockSize: 64 << 10})
			require.NoError(t, err)
			out[info.ID] = info
		}
	}
	return out
}

// bucketKeys lists every object key under prefix, through S3.
func bucketKeys(t *testing.T, srv *testutil.S3Server, prefix string) []string {
	t.Helper()
	var keys []string
	p := s3.NewListObjectsV2Paginator(srv.Client(), &s3.ListObjectsV2Input{Bucket: aws.String(srv.Bucket), Prefix: aws.String(prefix + "/")})
	for p.HasMorePages() {
		page, err := p.NextPage(bg)
		require.NoError(t, err)
		for _, o := range page.Contents {
			keys = append(keys, *o.Key)
		}
	}
	sort.Strings(keys)
	return keys
}

// diskState maps every file and directory under dir to its size and
// modification time: a write and delete (a probe) changes its parent
// directory's mtime even though no object is left behind.
func diskState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out[p] = fmt.Sprintf("%s %s %d", fi.ModTime().Format(time.RFC3339Nano), fi.Mode(), fi.Size())
		return nil
	}))
	return out
}

func targetBackups(t assert.TestingT, target string) []v1.Backup {
	var list v1.BackupList
	assert.NoError(t, k8s.List(bg, &list, client.MatchingLabels{v1.LabelBackupTarget: target}))
	return list.Items
}

func stalledWith(t assert.TestingT, bt *v1.BackupTarget, reason string) {
	c := meta.FindStatusCondition(bt.Status.Conditions, v1.ConditionStalled)
	if assert.NotNil(t, c, "Stalled condition") {
		assert.Equal(t, reason, c.Reason, c.Message)
	}
	assert.False(t, ready(bt.Status.Conditions))
	assert.Equal(t, bt.Generation, bt.Status.ObservedGeneration)
}

// TestBackupTargetImport: a target holding 2 volumes × 2 backups made with
// backupstore directly becomes Ready with matching counts, and every
// backup appears as a complete, labelled Backup object. Deleting the
// target leaves the remote objects and the Backup objects.
func TestBackupTargetImport(t *testing.T) {
	t.Parallel()
	srv := testutil.StartS3(t)
	const prefix = "imp"
	vols := []string{"imp-a", "Imp_B"} // the second is not a DNS name
	made := makeBackups(t, openStore(t, srv, prefix, nil), vols, 2)
	var stored int64
	for _, b := range made {
		stored += b.NewBytes
	}
	dir := filepath.Join(srv.Dir, srv.Bucket, prefix)
	before := diskState(t, dir)
	secret(t, "bt-imp-creds", credsFor(srv))
	newTarget(t, "bt-imp", srv.URL(prefix), srv.Endpoint, "bt-imp-creds")

	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		bt := getTarget(c, "bt-imp")
		assert.True(c, ready(bt.Status.Conditions), "%+v", bt.Status.Conditions)
		assert.True(c, current(c, bt))
		assert.Equal(c, int32(2), bt.Status.VolumeCount)
		assert.Equal(c, int32(4), bt.Status.BackupCount)
		assert.Equal(c, stored, bt.Status.StoredBytes)
		assert.NotNil(c, bt.Status.LastSyncTime)
	}, targetWait, tick)
	// The probe wrote and deleted an object: the store's directory changed,
	// which is what TestBackupTargetReadOnly checks never happens.
	assert.NotEqual(t, before, diskState(t, dir), "the probe left no trace on disk")

	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		list := targetBackups(c, "bt-imp")
		if !assert.Len(c, list, 4) {
			return
		}
		for _, b := range list {
			info, ok := made[b.Spec.BackupID]
			if !assert.True(c, ok, "backup %s has unknown id %q", b.Name, b.Spec.BackupID) {
				continue
			}
			assert.Equal(c, info.Volume, b.Spec.VolumeName)
			assert.Equal(c, v1.ObjectName("bt-imp"), b.Spec.BackupTargetRef)
			assert.Equal(c, "Retain", b.Spec.DeletePolicy)
			assert.Empty(c, b.OwnerReferences)
			assert.True(c, ready(b.Status.Conditions))
			assert.True(c, current(c, &b))
			assert.Equal(c, "Completed", b.Status.State)
			assert.Equal(c, info.ID, b.Status.BackupID)
			assert.Equal(c, info.Size, b.Status.Size)
			assert.Equal(c, info.NewBytes, b.Status.UploadedBytes)
			if assert.NotNil(c, b.Status.CreationTime) {
				assert.True(c, info.Created.Truncate(time.Second).Equal(b.Status.CreationTime.Time))
			}
			assert.NotNil(c, b.Status.CompletionTime)
			if info.Volume == "imp-a" {
				assert.Equal(c, "imp-a-"+info.ID, b.Name)
				assert.Equal(c, "imp-a", b.Labels[v1.LabelVolume])
			} else {
				assert.True(c, strings.HasPrefix(b.Name, "imp-b-"), b.Name)
			}
		}
	}, targetWait, tick)

	// A new backup appears at the next poll.
	more := makeBackups(t, openStore(t, srv, prefix, nil), []string{"imp-a"}, 1)
	for id := range more {
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.Equal(c, int32(5), getTarget(c, "bt-imp").Status.BackupCount)
			b := &v1.Backup{}
			assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: "imp-a-" + id}, b))
		}, targetWait, tick)
	}

	// Deleting the target keeps the data and the Backup objects.
	keys := bucketKeys(t, srv, prefix)
	require.NoError(t, k8s.Delete(bg, &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "bt-imp"}}))
	time.Sleep(3 * time.Second)
	assert.Equal(t, keys, bucketKeys(t, srv, prefix))
	assert.Len(t, targetBackups(t, "bt-imp"), 5)
	list, err := openStore(t, srv, prefix, nil).List(bg, "imp-a")
	require.NoError(t, err)
	assert.Len(t, list, 3)
}

// TestBackupTargetErrors: each failure stalls with its reason in bounded
// time, never showing a Secret value; fixing a Secret makes the target
// Ready without touching it.
func TestBackupTargetErrors(t *testing.T) {
	t.Parallel()
	srv := testutil.StartS3(t)

	t.Run("BadCredentials", func(t *testing.T) {
		t.Parallel()
		const wrong = "not-the-secret-key-0123456789"
		creds := credsFor(srv)
		creds[targets.SecretSecretAccessKey] = wrong
		sec := secret(t, "bt-badcreds", creds)
		newTarget(t, "bt-badcreds", srv.URL("bad"), srv.Endpoint, "bt-badcreds")
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			bt := getTarget(c, "bt-badcreds")
			stalledWith(c, bt, controllers.ReasonBadCredentials)
			assert.False(c, current(c, bt))
		}, targetWait, tick)
		bt := getTarget(t, "bt-badcreds")
		for _, cond := range bt.Status.Conditions {
			assert.NotContains(t, cond.Message, wrong)
			assert.NotContains(t, cond.Message, srv.SecretKey)
		}
		for _, e := range eventsOf(t, "bt-badcreds") {
			assert.NotContains(t, e.Note, wrong)
		}
		assert.NotEmpty(t, eventsOf(t, "bt-badcreds"), "a Stalled event")

		// Fix the Secret: Ready again, the target untouched.
		gen := bt.Generation
		sec.StringData = credsFor(srv)
		require.NoError(t, k8s.Update(bg, sec))
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			bt := getTarget(c, "bt-badcreds")
			assert.True(c, ready(bt.Status.Conditions), "%+v", bt.Status.Conditions)
			assert.Nil(c, meta.FindStatusCondition(bt.Status.Conditions, v1.ConditionStalled))
			assert.Equal(c, gen, bt.Generation)
		}, targetWait, tick)
	})

	t.Run("BucketNotFound", func(t *testing.T) {
		t.Parallel()
		secret(t, "bt-nobucket", credsFor(srv))
		newTarget(t, "bt-nobucket", "s3://no-such-bucket/x", srv.Endpoint, "bt-nobucket")
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			stalledWith(c, getTarget(c, "bt-nobucket"), controllers.ReasonBucketNotFound)
		}, targetWait, tick)
	})

	t.Run("Unreachable", func(t *testing.T) {
		t.Parallel()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		closed := "http://" + l.Addr().String()
		require.NoError(t, l.Close())
		secret(t, "bt-unreach", credsFor(srv))
		start := time.Now()
		newTarget(t, "bt-unreach", srv.URL("u"), closed, "bt-unreach")
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			stalledWith(c, getTarget(c, "bt-unreach"), controllers.ReasonUnreachable)
		}, targetWait, tick)
		t.Logf("stalled Unreachable after %v", time.Since(start))
	})

	t.Run("SecretNotFound", func(t *testing.T) {
		t.Parallel()
		newTarget(t, "bt-nosecret", srv.URL("ns"), srv.Endpoint, "bt-nosecret")
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			stalledWith(c, getTarget(c, "bt-nosecret"), controllers.ReasonSecretNotFound)
		}, targetWait, tick)
		// Creating it is a Secret event: the target re-probes.
		secret(t, "bt-nosecret", credsFor(srv))
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.True(c, ready(getTarget(c, "bt-nosecret").Status.Conditions))
		}, targetWait, tick)
	})

	t.Run("WrongKey", func(t *testing.T) {
		t.Parallel()
		good, bad := make([]byte, 32), make([]byte, 32)
		_, _ = rand.Read(good)
		_, _ = rand.Read(bad)
		makeBackups(t, openStore(t, srv, "enc", good), []string{"enc-vol"}, 1)
		secret(t, "bt-wrongkey", credsFor(srv))
		key := secret(t, "bt-wrongkey-key", map[string]string{targets.SecretEncryptionKey: hex.EncodeToString(bad)})
		newTarget(t, "bt-wrongkey", srv.URL("enc"), srv.Endpoint, "bt-wrongkey", func(bt *v1.BackupTarget) {
			bt.Spec.Encryption = &v1.BackupEncryption{KeySecretRef: v1.SecretReference{Namespace: v1.SystemNamespace, Name: "bt-wrongkey-key"}}
		})
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			stalledWith(c, getTarget(c, "bt-wrongkey"), controllers.ReasonWrongKey)
		}, targetWait, tick)
		for _, cond := range getTarget(t, "bt-wrongkey").Status.Conditions {
			assert.NotContains(t, cond.Message, hex.EncodeToString(bad))
		}
		key.StringData = map[string]string{targets.SecretEncryptionKey: hex.EncodeToString(good)}
		require.NoError(t, k8s.Update(bg, key))
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			bt := getTarget(c, "bt-wrongkey")
			assert.True(c, ready(bt.Status.Conditions), "%+v", bt.Status.Conditions)
			assert.Equal(c, int32(1), bt.Status.BackupCount)
		}, targetWait, tick)
	})
}

// eventsOf returns the events recorded about a target.
func eventsOf(t *testing.T, name string) []eventsv1.Event {
	t.Helper()
	var list eventsv1.EventList
	require.NoError(t, k8s.List(bg, &list))
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Kind == "BackupTarget" && e.Regarding.Name == name {
			out = append(out, e)
		}
	}
	return out
}

// TestBackupTargetReadOnly: a read-only target reads the catalogue and
// imports, but never writes: not a probe, not a lock, not a byte on the
// server's disk, over several polls.
func TestBackupTargetReadOnly(t *testing.T) {
	t.Parallel()
	srv := testutil.StartS3(t)
	const prefix = "ro"
	makeBackups(t, openStore(t, srv, prefix, nil), []string{"ro-vol"}, 2)
	dir := filepath.Join(srv.Dir, srv.Bucket)
	keys, disk := bucketKeys(t, srv, prefix), diskState(t, dir)
	secret(t, "bt-ro", credsFor(srv))
	newTarget(t, "bt-ro", srv.URL(prefix), srv.Endpoint, "bt-ro", func(bt *v1.BackupTarget) { bt.Spec.ReadOnly = true })
	var first time.Time
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		bt := getTarget(c, "bt-ro")
		assert.True(c, ready(bt.Status.Conditions), "%+v", bt.Status.Conditions)
		assert.Equal(c, int32(2), bt.Status.BackupCount)
		assert.Len(c, targetBackups(c, "bt-ro"), 2)
		if bt.Status.LastSyncTime != nil {
			first = bt.Status.LastSyncTime.Time
		}
	}, targetWait, tick)
	// Two more polls.
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		bt := getTarget(c, "bt-ro")
		assert.True(c, bt.Status.LastSyncTime.Time.After(first.Add(5*time.Second)), "%v", bt.Status.LastSyncTime)
	}, targetWait, tick)
	assert.Equal(t, keys, bucketKeys(t, srv, prefix))
	after := diskState(t, dir)
	for p, st := range disk {
		assert.Equal(t, st, after[p], "changed on disk: %s", p)
	}
	for p := range after {
		if _, ok := disk[p]; !ok && !strings.Contains(p, ".sgwtmp") {
			t.Errorf("new on disk: %s", p)
		}
	}
}
