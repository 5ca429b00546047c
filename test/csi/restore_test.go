package csi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

var blockCap = &csipb.VolumeCapability{
	AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}},
}

const copySize = 8 << 20

// image is what a test wrote to a volume: the expected contents of its
// device, zeros where nothing was written.
type image []byte

// scribble writes n random bytes at off through the device and into img,
// and flushes the device.
func (img image) scribble(t *testing.T, dev string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	_, err = f.WriteAt(buf, off)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	copy(img[off:], buf)
}

// requireDevice checks that the device's first len(img) bytes are img and
// that the rest of it reads as zeros.
func requireDevice(t *testing.T, dev string, img image) {
	t.Helper()
	got, err := os.ReadFile(dev)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(got), len(img))
	require.Equal(t, sha256.Sum256(img), sha256.Sum256(got[:len(img)]), "device contents differ from what was written")
	assert.True(t, bytes.Equal(got[len(img):], make([]byte, len(got)-len(img))), "bytes past the source's size are not zero")
}

// newVolume creates a one-replica volume and deletes it at the end.
func newVolume(t *testing.T, req *csipb.CreateVolumeRequest) string {
	t.Helper()
	vol, err := controller.CreateVolume(ctxT(t), req)
	require.NoError(t, err)
	id := vol.Volume.VolumeId
	t.Cleanup(func() { deleteVolume(t, id) })
	return id
}

// deleteVolume unpublishes and deletes a volume and waits until it is gone.
func deleteVolume(t *testing.T, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, _ = controller.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: sanityNode})
	_, err := controller.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id})
	assert.NoError(t, err)
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(k8s.Get(ctx, clientKey(id), &v1.Volume{})))
	}, 3*time.Minute, 250*time.Millisecond, "volume %s not deleted", id)
}

// publish attaches the volume to the sanity node and returns its device.
func publish(t *testing.T, id string) string {
	t.Helper()
	r, err := controller.ControllerPublishVolume(ctxT(t), &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: sanityNode, VolumeCapability: blockCap})
	require.NoError(t, err)
	return r.PublishContext["devicePath"]
}

func unpublish(t *testing.T, id string) {
	t.Helper()
	_, err := controller.ControllerUnpublishVolume(ctxT(t), &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: sanityNode})
	require.NoError(t, err)
}

// waitRestored waits until the Volume's Restored condition is True.
func waitRestored(t *testing.T, id string) *v1.Volume {
	t.Helper()
	vol := &v1.Volume{}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.NoError(c, k8s.Get(context.Background(), clientKey(id), vol))
		cond := meta.FindStatusCondition(vol.Status.Conditions, v1.ConditionRestored)
		require.NotNil(c, cond)
		assert.Equal(c, "True", string(cond.Status), "%s: %s", cond.Reason, cond.Message)
	}, 3*time.Minute, 250*time.Millisecond)
	return vol
}

// takeSnapshot creates a type-snapshot CSI snapshot and waits until it is
// ready.
func takeSnapshot(t *testing.T, name, vol string) *csipb.Snapshot {
	t.Helper()
	req := &csipb.CreateSnapshotRequest{Name: name, SourceVolumeId: vol, Parameters: map[string]string{"type": "snapshot"}}
	var snap *csipb.Snapshot
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		r, err := controller.CreateSnapshot(context.Background(), req)
		require.NoError(c, err)
		snap = r.Snapshot
		assert.True(c, snap.ReadyToUse)
	}, 2*time.Minute, 250*time.Millisecond)
	return snap
}

// TestRestoreFromSnapshot: data written through the block device, a
// type-snapshot snapshot, more writes after it, the source detached; a
// larger volume created from the snapshot holds exactly the snapshot's
// bytes (zeros beyond the source's size); the same request again is the
// same volume, and the snapshot can be deleted once the volume is filled.
func TestRestoreFromSnapshot(t *testing.T) {
	t.Parallel()
	src := newVolume(t, createReq("restore-src", copySize))
	dev := publish(t, src)
	img := make(image, copySize)
	img.scribble(t, dev, 0, 64<<10)
	img.scribble(t, dev, 3<<20+512, 1<<20)
	img.scribble(t, dev, copySize-4096, 4096)
	snap := takeSnapshot(t, "restore-src-snap", src)
	image(make([]byte, copySize)).scribble(t, dev, 0, 2<<20) // after the snapshot: not in the copy
	unpublish(t, src)

	req := createReq("restore-dst", 2*copySize)
	req.VolumeContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{
		Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: snap.SnapshotId}}}
	dst := newVolume(t, req)
	vol := waitRestored(t, dst)
	assert.Equal(t, &v1.SnapshotSource{Volume: src, Snapshot: "restore-src-snap"}, vol.Status.RestoredSnapshot)
	requireDevice(t, publish(t, dst), img)

	again, err := controller.CreateVolume(ctxT(t), req)
	require.NoError(t, err, "the same request again is the same volume")
	assert.Equal(t, dst, again.Volume.VolumeId)
	assert.Equal(t, snap.SnapshotId, again.Volume.ContentSource.GetSnapshot().GetSnapshotId())
	_, err = controller.DeleteSnapshot(ctxT(t), &csipb.DeleteSnapshotRequest{SnapshotId: snap.SnapshotId})
	require.NoError(t, err, "a filled volume no longer needs the snapshot")
}

// TestCloneVolume: a clone of an attached volume holds the source's bytes
// at the time of the clone; the snapshot Cairn took for it is gone once
// the clone is filled and was never listed as a CSI snapshot.
func TestCloneVolume(t *testing.T) {
	t.Parallel()
	src := newVolume(t, createReq("clone-src", copySize))
	dev := publish(t, src)
	img := make(image, copySize)
	img.scribble(t, dev, 4096, 128<<10)
	img.scribble(t, dev, 5<<20, 1<<20+4096)

	req := createReq("clone-dst", copySize)
	req.VolumeContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Volume{
		Volume: &csipb.VolumeContentSource_VolumeSource{VolumeId: src}}}
	dst := newVolume(t, req)
	vol := waitRestored(t, dst)
	require.NotNil(t, vol.Status.RestoredSnapshot)
	assert.Equal(t, src, vol.Status.RestoredSnapshot.Volume)
	image(make([]byte, copySize)).scribble(t, dev, 0, 1<<20) // after the clone: not in it
	unpublish(t, src)
	requireDevice(t, publish(t, dst), img)

	list, err := controller.ListSnapshots(ctxT(t), &csipb.ListSnapshotsRequest{SourceVolumeId: src})
	require.NoError(t, err)
	assert.Empty(t, list.Entries, "the clone's snapshot is not a CSI snapshot")
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		err := k8s.Get(context.Background(), clientKey(vol.Status.RestoredSnapshot.Snapshot), &v1.Snapshot{})
		assert.True(c, apierrors.IsNotFound(err), "clone snapshot still there: %v", err)
	}, 2*time.Minute, 250*time.Millisecond)
	got, err := controller.ControllerGetVolume(ctxT(t), &csipb.ControllerGetVolumeRequest{VolumeId: dst})
	require.NoError(t, err)
	assert.Equal(t, src, got.Volume.ContentSource.GetVolume().GetVolumeId())
}
