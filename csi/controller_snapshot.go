package csi

import (
	"context"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// CreateSnapshot creates a Snapshot (type snapshot, kept on the replicas)
// or a Backup (type backup, uploaded to a BackupTarget) named after the
// request name, or returns the one an earlier call created.
func (c *Controller) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" || req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "name and source volume id are required")
	}
	params, err := parseSnapshotParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	name := objectName(req.GetName())
	defer c.locks.lock("snapshot/" + name)()
	if snap, err := c.existingSnapshot(ctx, name, req); snap != nil || err != nil {
		return &csi.CreateSnapshotResponse{Snapshot: snap}, err
	}
	vol, err := c.mustVolume(ctx, req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	obj, err := c.newSnapshotObject(ctx, params, name, req.GetName(), vol)
	if err != nil {
		return nil, err
	}
	if err := c.Client.Create(ctx, obj); err != nil {
		return nil, apiError(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(obj)}, nil
}

// existingSnapshot finds a Snapshot or Backup an earlier call created for
// the name: the same source is returned, another source or an object not
// created for the name is AlreadyExists.
func (c *Controller) existingSnapshot(ctx context.Context, name string, req *csi.CreateSnapshotRequest) (*csi.Snapshot, error) {
	for _, obj := range []client.Object{&v1.Snapshot{}, &v1.Backup{}} {
		err := c.Reader.Get(ctx, client.ObjectKey{Name: name}, obj)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, apiError(err)
		}
		snap := csiSnapshot(obj)
		if obj.GetAnnotations()[AnnotationName] != req.GetName() || snap.SourceVolumeId != req.GetSourceVolumeId() {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %s exists for another name or source volume", snap.SnapshotId)
		}
		return snap, nil
	}
	return nil, nil
}

// newSnapshotObject builds the Snapshot (owned by the volume: it lives on
// the volume's replicas) or the Backup (deletePolicy Delete: deleting the
// CSI snapshot deletes the backup from the target).
func (c *Controller) newSnapshotObject(ctx context.Context, p snapshotParams, name, csiName string, vol *v1.Volume) (client.Object, error) {
	meta := metav1.ObjectMeta{Name: name, Annotations: map[string]string{AnnotationName: csiName},
		Labels: map[string]string{v1.LabelVolume: vol.Name}}
	if p.kind == kindSnapshot {
		s := &v1.Snapshot{ObjectMeta: meta, Spec: v1.SnapshotSpec{VolumeName: vol.Name}}
		return s, controllerutil.SetOwnerReference(vol, s, c.Client.Scheme())
	}
	target, err := c.backupTarget(ctx, p.target, vol)
	if err != nil {
		return nil, err
	}
	return &v1.Backup{ObjectMeta: meta, Spec: v1.BackupSpec{VolumeName: vol.Name,
		BackupTargetRef: v1.ObjectName(target), DeletePolicy: "Delete"}}, nil
}

// backupTarget is the backupTarget parameter, else the backupTargetRef of
// the volume's policy; InvalidArgument when there is none or it does not
// exist.
func (c *Controller) backupTarget(ctx context.Context, param string, vol *v1.Volume) (string, error) {
	target := param
	if target == "" {
		target = c.policyTarget(ctx, vol)
	}
	if target == "" {
		return "", status.Errorf(codes.InvalidArgument, "volume %s has no backup target: set parameter backupTarget or the policy's backupTargetRef", vol.Name)
	}
	err := c.Reader.Get(ctx, client.ObjectKey{Name: target}, &v1.BackupTarget{})
	if apierrors.IsNotFound(err) {
		return "", status.Errorf(codes.InvalidArgument, "BackupTarget %q does not exist", target)
	}
	return target, apiError(err)
}

// policyTarget is the backupTargetRef of the volume's policy, or "".
func (c *Controller) policyTarget(ctx context.Context, vol *v1.Volume) string {
	name := string(vol.Spec.PolicyRef)
	if name == "" {
		name = vol.Status.EffectivePolicy
	}
	p := &v1.VolumePolicy{}
	if name == "" || c.Reader.Get(ctx, client.ObjectKey{Name: name}, p) != nil {
		return ""
	}
	return string(p.Spec.BackupTargetRef)
}

// csiSnapshot describes a Snapshot or Backup to the CO.
func csiSnapshot(obj client.Object) *csi.Snapshot {
	created := obj.GetCreationTimestamp()
	out := &csi.Snapshot{}
	switch o := obj.(type) {
	case *v1.Snapshot:
		out.SnapshotId, out.SourceVolumeId, out.ReadyToUse = snapshotID(kindSnapshot, o.Name), o.Spec.VolumeName, o.Status.ReadyToUse
		if o.Status.RestoreSize != nil {
			out.SizeBytes = o.Status.RestoreSize.Value()
		}
		if o.Status.CreationTime != nil {
			created = *o.Status.CreationTime
		}
	case *v1.Backup:
		out.SnapshotId, out.SourceVolumeId = snapshotID(kindBackup, o.Name), o.Spec.VolumeName
		out.ReadyToUse, out.SizeBytes = o.Status.State == "Completed", o.Status.Size
		if o.Status.CreationTime != nil {
			created = *o.Status.CreationTime
		}
	}
	if !created.IsZero() {
		out.CreationTime = timestamppb.New(created.Time)
	}
	return out
}

// DeleteSnapshot deletes the Snapshot or Backup; an unknown id succeeds.
func (c *Controller) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	kind, name, ok := parseSnapshotID(req.GetSnapshotId())
	if !ok {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	var obj client.Object = &v1.Snapshot{}
	if kind == kindBackup {
		obj = &v1.Backup{}
	} else if err := c.snapshotInUse(ctx, name); err != nil {
		return nil, err
	}
	obj.SetName(name)
	if err := c.Client.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
		return nil, apiError(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// snapshotInUse fails with FailedPrecondition while a volume is still
// being filled from the Snapshot: deleting it would fail that copy.
func (c *Controller) snapshotInUse(ctx context.Context, name string) error {
	var vols v1.VolumeList
	if err := c.Reader.List(ctx, &vols); err != nil {
		return apiError(err)
	}
	for _, v := range vols.Items {
		if string(v.Spec.FromSnapshot) == name && v.DeletionTimestamp.IsZero() && !meta.IsStatusConditionTrue(v.Status.Conditions, v1.ConditionRestored) {
			return status.Errorf(codes.FailedPrecondition, "volume %s is still being filled from snapshot %s", v.Name, name)
		}
	}
	return nil
}

// ListSnapshots lists the Snapshots and Backups the driver created and
// that are not being deleted, sorted by id, filtered by source volume; given
// a snapshot id it finds any Snapshot or Backup (one a schedule took or a
// target's catalogue imported too, for pre-provisioned snapshots).
func (c *Controller) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	all, err := c.allSnapshots(ctx, req.GetSnapshotId() == "")
	if err != nil {
		return nil, err
	}
	byID := map[string]*csi.Snapshot{}
	var ids []string
	for _, s := range all {
		if (req.GetSnapshotId() != "" && s.SnapshotId != req.GetSnapshotId()) ||
			(req.GetSourceVolumeId() != "" && s.SourceVolumeId != req.GetSourceVolumeId()) {
			continue
		}
		byID[s.SnapshotId] = s
		ids = append(ids, s.SnapshotId)
	}
	slices.Sort(ids)
	ids, next, err := page(ids, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	out := &csi.ListSnapshotsResponse{NextToken: next}
	for _, id := range ids {
		out.Entries = append(out.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: byID[id]})
	}
	return out, nil
}

// allSnapshots reads the Snapshots and Backups not being deleted from the
// API server; with ownOnly only those the driver created.
func (c *Controller) allSnapshots(ctx context.Context, ownOnly bool) ([]*csi.Snapshot, error) {
	var snaps v1.SnapshotList
	var backups v1.BackupList
	if err := c.Reader.List(ctx, &snaps); err != nil {
		return nil, apiError(err)
	}
	if err := c.Reader.List(ctx, &backups); err != nil {
		return nil, apiError(err)
	}
	var out []*csi.Snapshot
	add := func(obj client.Object) {
		if obj.GetDeletionTimestamp().IsZero() && (!ownOnly || obj.GetAnnotations()[AnnotationName] != "") {
			out = append(out, csiSnapshot(obj))
		}
	}
	for i := range snaps.Items {
		add(&snaps.Items[i])
	}
	for i := range backups.Items {
		add(&backups.Items[i])
	}
	return out, nil
}

// GetSnapshot describes one Snapshot or Backup; an id the driver never
// returned, or one whose object is gone or being deleted, is NotFound.
func (c *Controller) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	kind, name, ok := parseSnapshotID(req.GetSnapshotId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "snapshot %q not found", req.GetSnapshotId())
	}
	var obj client.Object = &v1.Snapshot{}
	if kind == kindBackup {
		obj = &v1.Backup{}
	}
	if err := c.Reader.Get(ctx, client.ObjectKey{Name: name}, obj); err != nil {
		return nil, notFound(err, "snapshot %q not found", req.GetSnapshotId())
	}
	if !obj.GetDeletionTimestamp().IsZero() {
		return nil, status.Errorf(codes.NotFound, "snapshot %q is being deleted", req.GetSnapshotId())
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(obj)}, nil
}
