package csi

import (
	"context"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

var (
	mountCap = &csipb.VolumeCapability{
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
	}
	multiWriter = &csipb.VolumeCapability{
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
	}
	btrfs = &csipb.VolumeCapability{
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "btrfs"}},
	}
	oneReplica = map[string]string{"replicas": "1"}
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func createReq(name string, size int64) *csipb.CreateVolumeRequest {
	return &csipb.CreateVolumeRequest{Name: name, Parameters: oneReplica, VolumeCapabilities: []*csipb.VolumeCapability{mountCap},
		CapacityRange: &csipb.CapacityRange{RequiredBytes: size}}
}

// TestCreateVolumeErrors: each invalid CreateVolume returns the code the
// spec's error table gives, and creates nothing.
func TestCreateVolumeErrors(t *testing.T) {
	ctx := ctxT(t)
	withParams := func(p map[string]string) *csipb.CreateVolumeRequest {
		r := createReq("err-params", 1<<20)
		r.Parameters = p
		return r
	}
	withCaps := func(c ...*csipb.VolumeCapability) *csipb.CreateVolumeRequest {
		r := createReq("err-caps", 1<<20)
		r.VolumeCapabilities = c
		return r
	}
	withRange := func(req, lim int64) *csipb.CreateVolumeRequest {
		r := createReq("err-range", 0)
		r.CapacityRange = &csipb.CapacityRange{RequiredBytes: req, LimitBytes: lim}
		return r
	}
	withSource := func(src *csipb.VolumeContentSource) *csipb.CreateVolumeRequest {
		r := createReq("err-source", 1<<20)
		r.VolumeContentSource = src
		return r
	}
	snapSrc := func(id string) *csipb.VolumeContentSource {
		return &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
	}
	cases := []struct {
		name string
		req  *csipb.CreateVolumeRequest
		code codes.Code
	}{
		{"no name", createReq("", 1<<20), codes.InvalidArgument},
		{"no capabilities", withCaps(), codes.InvalidArgument},
		{"multi-node writer", withCaps(mountCap, multiWriter), codes.InvalidArgument},
		{"unsupported filesystem", withCaps(btrfs), codes.InvalidArgument},
		{"unknown parameter", withParams(map[string]string{"iops": "9000"}), codes.InvalidArgument},
		{"replicas out of bounds", withParams(map[string]string{"replicas": "9"}), codes.InvalidArgument},
		{"policy does not exist", withParams(map[string]string{"policy": "no-such-policy"}), codes.InvalidArgument},
		{"required above limit", withRange(2<<20, 1<<20), codes.InvalidArgument},
		{"larger than 64Ti", withRange(65<<40, 0), codes.OutOfRange},
		{"no multiple of 4096 in range", withRange(4097, 5000), codes.OutOfRange},
		{"source snapshot not found", withSource(snapSrc("backup/nope")), codes.NotFound},
		{"source snapshot id not ours", withSource(snapSrc("garbage")), codes.NotFound},
		{"clone", withSource(&csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Volume{
			Volume: &csipb.VolumeContentSource_VolumeSource{VolumeId: "no-such-volume"}}}), codes.NotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := controller.CreateVolume(ctx, c.req)
			assert.Equal(t, c.code, status.Code(err), "%v", err)
		})
	}
	var vols v1.VolumeList
	require.NoError(t, k8s.List(ctx, &vols))
	for _, v := range vols.Items {
		assert.NotContains(t, v.Name, "err-", "an invalid request created a volume")
	}
}

// TestCreateVolumeIdempotent: the same name and size return the same
// volume; the same name with a size out of range or other parameters is
// AlreadyExists; a long or upper-case name maps to one deterministic name.
func TestCreateVolumeIdempotent(t *testing.T) {
	ctx := ctxT(t)
	for _, name := range []string{"idem-vol", "Idem-Volume-With-A-Name-Longer-Than-Forty-Characters"} {
		first, err := controller.CreateVolume(ctx, createReq(name, 1<<20))
		require.NoError(t, err)
		t.Cleanup(func() {
			_, _ = controller.DeleteVolume(context.Background(), &csipb.DeleteVolumeRequest{VolumeId: first.Volume.VolumeId})
		})
		again, err := controller.CreateVolume(ctx, createReq(name, 1<<20))
		require.NoError(t, err)
		assert.Equal(t, first.Volume.VolumeId, again.Volume.VolumeId)
		assert.Equal(t, int64(1<<20), again.Volume.CapacityBytes)

		_, err = controller.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: name, Parameters: oneReplica,
			VolumeCapabilities: []*csipb.VolumeCapability{mountCap}, CapacityRange: &csipb.CapacityRange{RequiredBytes: 2 << 20}})
		assert.Equal(t, codes.AlreadyExists, status.Code(err), "%v", err)
		other := createReq(name, 1<<20)
		other.Parameters = map[string]string{"replicas": "2"}
		_, err = controller.CreateVolume(ctx, other)
		assert.Equal(t, codes.AlreadyExists, status.Code(err), "%v", err)
	}
}

// TestVolumeCallErrors: calls on unknown volumes, nodes and snapshots.
func TestVolumeCallErrors(t *testing.T) {
	ctx := ctxT(t)
	vol, err := controller.CreateVolume(ctx, createReq("calls-vol", 1<<20))
	require.NoError(t, err)
	id := vol.Volume.VolumeId
	t.Cleanup(func() { _, _ = controller.DeleteVolume(context.Background(), &csipb.DeleteVolumeRequest{VolumeId: id}) })
	cases := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"delete without id", func() error { _, err := controller.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{}); return err }, codes.InvalidArgument},
		{"delete unknown", func() error {
			_, err := controller.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: "no-such-volume"})
			return err
		}, codes.OK},
		{"publish unknown volume", func() error {
			_, err := controller.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: "no-such-volume", NodeId: sanityNode, VolumeCapability: mountCap})
			return err
		}, codes.NotFound},
		{"publish to unknown node", func() error {
			_, err := controller.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "no-such-node", VolumeCapability: mountCap})
			return err
		}, codes.NotFound},
		{"publish multi-node writer", func() error {
			_, err := controller.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: sanityNode, VolumeCapability: multiWriter})
			return err
		}, codes.InvalidArgument},
		{"unpublish unknown volume", func() error {
			_, err := controller.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: "no-such-volume", NodeId: sanityNode})
			return err
		}, codes.OK},
		{"validate unknown", func() error {
			_, err := controller.ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeId: "no-such-volume", VolumeCapabilities: []*csipb.VolumeCapability{mountCap}})
			return err
		}, codes.NotFound},
		{"expand without range", func() error {
			_, err := controller.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id})
			return err
		}, codes.InvalidArgument},
		{"expand beyond 64Ti", func() error {
			_, err := controller.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csipb.CapacityRange{RequiredBytes: 65 << 40}})
			return err
		}, codes.OutOfRange},
		{"expand unknown", func() error {
			_, err := controller.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: "no-such-volume", CapacityRange: &csipb.CapacityRange{RequiredBytes: 1}})
			return err
		}, codes.NotFound},
		{"list with a foreign token", func() error {
			_, err := controller.ListVolumes(ctx, &csipb.ListVolumesRequest{StartingToken: "42"})
			return err
		}, codes.Aborted},
		{"get unknown", func() error {
			_, err := controller.ControllerGetVolume(ctx, &csipb.ControllerGetVolumeRequest{VolumeId: "no-such-volume"})
			return err
		}, codes.NotFound},
		{"snapshot of unknown volume", func() error {
			_, err := controller.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "s", SourceVolumeId: "no-such-volume"})
			return err
		}, codes.NotFound},
		{"snapshot of unknown type", func() error {
			_, err := controller.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "s", SourceVolumeId: id, Parameters: map[string]string{"type": "clone"}})
			return err
		}, codes.InvalidArgument},
		{"backup without a target", func() error {
			_, err := controller.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "s", SourceVolumeId: id, Parameters: map[string]string{"type": "backup"}})
			return err
		}, codes.InvalidArgument},
		{"backup to a missing target", func() error {
			_, err := controller.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "s", SourceVolumeId: id, Parameters: map[string]string{"type": "backup", "backupTarget": "nope"}})
			return err
		}, codes.InvalidArgument},
		{"delete snapshot not ours", func() error {
			_, err := controller.DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: "garbage"})
			return err
		}, codes.OK},
		{"stage without device", func() error {
			_, err := node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: tmp + "/x", VolumeCapability: mountCap})
			return err
		}, codes.InvalidArgument},
		{"stage with a device that is not one", func() error {
			_, err := node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: tmp + "/x", VolumeCapability: mountCap,
				PublishContext: map[string]string{"devicePath": "/dev/null"}})
			return err
		}, codes.FailedPrecondition},
		{"publish not staged", func() error {
			_, err := node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: tmp + "/not-staged", TargetPath: tmp + "/t", VolumeCapability: mountCap})
			return err
		}, codes.FailedPrecondition},
		{"stage unknown volume", func() error {
			_, err := node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "no-such-volume", StagingTargetPath: tmp + "/x", VolumeCapability: mountCap})
			return err
		}, codes.NotFound},
		{"unstage what is not staged", func() error {
			_, err := node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: tmp + "/never"})
			return err
		}, codes.OK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			assert.Equal(t, c.code, status.Code(err), "%v", err)
		})
	}
}

// TestLocalSnapshot: a type snapshot is taken by the engine of the
// detached volume, listed under its volume, repeated idempotently, and
// deleted (restore_test.go restores from one).
func TestLocalSnapshot(t *testing.T) {
	ctx := ctxT(t)
	vol, err := controller.CreateVolume(ctx, createReq("local-snap-vol", 1<<20))
	require.NoError(t, err)
	id := vol.Volume.VolumeId
	t.Cleanup(func() { _, _ = controller.DeleteVolume(context.Background(), &csipb.DeleteVolumeRequest{VolumeId: id}) })
	req := &csipb.CreateSnapshotRequest{Name: "local-snap", SourceVolumeId: id, Parameters: map[string]string{"type": "snapshot"}}
	var snap *csipb.Snapshot
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		r, err := controller.CreateSnapshot(ctx, req)
		require.NoError(c, err)
		snap = r.Snapshot
		assert.True(c, snap.ReadyToUse)
	}, 2*time.Minute, 250*time.Millisecond)
	assert.Equal(t, "snapshot/local-snap", snap.SnapshotId)
	assert.Equal(t, int64(1<<20), snap.SizeBytes)

	_, err = controller.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "local-snap", SourceVolumeId: "other-volume"})
	assert.Equal(t, codes.AlreadyExists, status.Code(err), "%v", err)
	list, err := controller.ListSnapshots(ctx, &csipb.ListSnapshotsRequest{SourceVolumeId: id})
	require.NoError(t, err)
	require.Len(t, list.Entries, 1)
	assert.Equal(t, snap.SnapshotId, list.Entries[0].Snapshot.SnapshotId)

	_, err = controller.DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: snap.SnapshotId})
	require.NoError(t, err)
	_, err = controller.DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: snap.SnapshotId})
	require.NoError(t, err, "a second delete succeeds")
}

// TestPublishedElsewhere: a volume published to one node cannot be
// published to another (FailedPrecondition) nor deleted until unpublished.
func TestPublishedElsewhere(t *testing.T) {
	ctx := ctxT(t)
	vol, err := controller.CreateVolume(ctx, createReq("elsewhere-vol", 1<<20))
	require.NoError(t, err)
	id := vol.Volume.VolumeId
	pub, err := controller.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "dev-node-2", VolumeCapability: mountCap})
	require.NoError(t, err)
	assert.NotEmpty(t, pub.PublishContext["devicePath"])
	_, err = controller.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: sanityNode, VolumeCapability: mountCap})
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	_, err = controller.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id})
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	got, err := controller.ControllerGetVolume(ctx, &csipb.ControllerGetVolumeRequest{VolumeId: id})
	require.NoError(t, err)
	assert.Equal(t, []string{"dev-node-2"}, got.Status.PublishedNodeIds)

	_, err = controller.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "dev-node-2"})
	require.NoError(t, err)
	_, err = controller.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "dev-node-2"})
	require.NoError(t, err, "a second unpublish succeeds")
	_, err = controller.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id})
	require.NoError(t, err)
}

// TestPolicyParameters: the policy parameter becomes spec.policyRef and
// replicas spec.replicas.
func TestPolicyParameters(t *testing.T) {
	ctx := ctxT(t)
	p := &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: "csi-gold"}}
	p.Spec.Replicas = 2
	require.NoError(t, k8s.Create(ctx, p))
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), p) })
	req := createReq("policy-vol", 1<<20)
	req.Parameters = map[string]string{"policy": "csi-gold", "replicas": "1", "csi.storage.k8s.io/fstype": "xfs"}
	vol, err := controller.CreateVolume(ctx, req)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = controller.DeleteVolume(context.Background(), &csipb.DeleteVolumeRequest{VolumeId: vol.Volume.VolumeId})
	})
	got := &v1.Volume{}
	require.NoError(t, k8s.Get(ctx, clientKey(vol.Volume.VolumeId), got))
	assert.Equal(t, v1.ObjectName("csi-gold"), got.Spec.PolicyRef)
	assert.Equal(t, int32(1), *got.Spec.Replicas)
	assert.Equal(t, "policy-vol", got.Annotations["csi.cairn.dev/name"])
}
