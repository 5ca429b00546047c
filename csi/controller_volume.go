package csi

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// CreateVolume creates a Volume named after the request name, or returns
// the one an earlier call created when it matches the request.
func (c *Controller) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	want, err := c.desiredVolume(ctx, req)
	if err != nil {
		return nil, err
	}
	defer c.locks.lock("volume/" + want.Name)()
	vol, err := c.getVolume(ctx, want.Name)
	if err != nil {
		return nil, err
	}
	if vol == nil {
		vol = want
		if err := c.Client.Create(ctx, vol); err != nil {
			return nil, apiError(err)
		}
	} else if err := sameVolume(vol, want, req); err != nil {
		return nil, err
	}
	return &csi.CreateVolumeResponse{Volume: csiVolume(vol)}, nil
}

// desiredVolume builds the Volume a CreateVolume request asks for.
func (c *Controller) desiredVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*v1.Volume, error) {
	params, err := parseVolumeParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	src, err := c.contentSource(ctx, req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	size, err := volumeSize(req.GetCapacityRange(), src.size)
	if err != nil {
		return nil, err
	}
	if err := c.checkPolicy(ctx, params.policy); err != nil {
		return nil, err
	}
	vol := &v1.Volume{ObjectMeta: metav1.ObjectMeta{
		Name:        objectName(req.GetName()),
		Annotations: map[string]string{AnnotationName: req.GetName()},
	}}
	vol.Spec.Size = *resource.NewQuantity(size, resource.BinarySI)
	vol.Spec.PolicyRef = v1.ObjectName(params.policy)
	vol.Spec.Replicas = params.replicas
	vol.Spec.FromBackup, vol.Spec.FromSnapshot, vol.Spec.FromVolume = src.backup, v1.ObjectName(src.snapshot), v1.ObjectName(src.volume)
	if id := req.GetVolumeContentSource().GetSnapshot().GetSnapshotId(); id != "" {
		vol.Annotations[AnnotationSnapshotID] = id
	}
	return vol, nil
}

// volumeSource is what a content source sets on the new Volume, and the
// least size it needs.
type volumeSource struct {
	backup   *v1.BackupSource // a backup-type snapshot: spec.fromBackup
	snapshot string           // a type-snapshot Snapshot: spec.fromSnapshot
	volume   string           // a volume to clone: spec.fromVolume
	size     int64
}

// contentSource resolves a content source: a backup-type snapshot becomes
// spec.fromBackup, a type-snapshot one spec.fromSnapshot and a volume
// spec.fromVolume (a clone); the source's size is the least size. A source
// that does not exist (or is being deleted) is NotFound.
func (c *Controller) contentSource(ctx context.Context, src *csi.VolumeContentSource) (volumeSource, error) {
	switch {
	case src == nil:
		return volumeSource{}, nil
	case src.GetVolume() != nil:
		return c.cloneSource(ctx, src.GetVolume().GetVolumeId())
	case src.GetSnapshot() == nil:
		return volumeSource{}, status.Error(codes.InvalidArgument, "unknown volume content source")
	}
	id := src.GetSnapshot().GetSnapshotId()
	kind, name, ok := parseSnapshotID(id)
	if !ok {
		return volumeSource{}, status.Errorf(codes.NotFound, "snapshot %q not found", id)
	}
	if kind == kindSnapshot {
		return c.snapshotSource(ctx, id, name)
	}
	b := &v1.Backup{}
	if err := c.Reader.Get(ctx, client.ObjectKey{Name: name}, b); err != nil {
		return volumeSource{}, notFound(err, "snapshot %q not found", id)
	}
	if b.Status.State != "Completed" || b.Status.BackupID == "" {
		return volumeSource{}, status.Errorf(codes.Unavailable, "backup %s is not complete yet (state %q)", name, b.Status.State)
	}
	return volumeSource{backup: &v1.BackupSource{BackupTargetRef: b.Spec.BackupTargetRef, Volume: b.Spec.VolumeName, Backup: b.Status.BackupID}, size: b.Status.Size}, nil
}

// snapshotSource resolves a type-snapshot Snapshot; one not taken yet is
// accepted (the volume controller waits for it).
func (c *Controller) snapshotSource(ctx context.Context, id, name string) (volumeSource, error) {
	s := &v1.Snapshot{}
	if err := c.Reader.Get(ctx, client.ObjectKey{Name: name}, s); err != nil {
		return volumeSource{}, notFound(err, "snapshot %q not found", id)
	}
	if !s.DeletionTimestamp.IsZero() {
		return volumeSource{}, status.Errorf(codes.NotFound, "snapshot %q is being deleted", id)
	}
	out := volumeSource{snapshot: name}
	if s.Status.RestoreSize != nil {
		out.size = s.Status.RestoreSize.Value()
	}
	return out, nil
}

// cloneSource resolves the volume a clone copies.
func (c *Controller) cloneSource(ctx context.Context, id string) (volumeSource, error) {
	if id == "" {
		return volumeSource{}, status.Error(codes.InvalidArgument, "volume content source has no volume id")
	}
	vol, err := c.getVolume(ctx, id)
	switch {
	case err != nil:
		return volumeSource{}, err
	case vol == nil || !vol.DeletionTimestamp.IsZero():
		return volumeSource{}, status.Errorf(codes.NotFound, "source volume %q not found", id)
	}
	return volumeSource{volume: vol.Name, size: vol.Spec.Size.Value()}, nil
}

// checkPolicy fails with InvalidArgument when the policy parameter names
// no VolumePolicy.
func (c *Controller) checkPolicy(ctx context.Context, name string) error {
	if name == "" {
		return nil
	}
	err := c.Reader.Get(ctx, client.ObjectKey{Name: name}, &v1.VolumePolicy{})
	if apierrors.IsNotFound(err) {
		return status.Errorf(codes.InvalidArgument, "parameter policy: VolumePolicy %q does not exist", name)
	}
	return apiError(err)
}

// notFound maps an API NotFound to codes.NotFound with msg, other errors
// through apiError.
func notFound(err error, msg string, args ...any) error {
	if apierrors.IsNotFound(err) {
		return status.Errorf(codes.NotFound, msg, args...)
	}
	return apiError(err)
}

// sameVolume checks that an existing Volume is the one req asks for:
// created for the same name, with a size in the requested range and the
// same parameters and source; otherwise AlreadyExists.
func sameVolume(vol, want *v1.Volume, req *csi.CreateVolumeRequest) error {
	switch {
	case vol.Annotations[AnnotationName] != req.GetName():
		return status.Errorf(codes.AlreadyExists, "volume %s exists and was not created for name %q", vol.Name, req.GetName())
	case !vol.DeletionTimestamp.IsZero():
		return status.Errorf(codes.Aborted, "volume %s is being deleted", vol.Name)
	case !fits(vol.Spec.Size.Value(), req.GetCapacityRange()):
		return status.Errorf(codes.AlreadyExists, "volume %s exists with size %d, outside the requested range (%s)", vol.Name, vol.Spec.Size.Value(), describeRange(req.GetCapacityRange()))
	case vol.Spec.PolicyRef != want.Spec.PolicyRef || !equality.Semantic.DeepEqual(vol.Spec.Replicas, want.Spec.Replicas) ||
		!equality.Semantic.DeepEqual(vol.Spec.FromBackup, want.Spec.FromBackup) ||
		vol.Spec.FromSnapshot != want.Spec.FromSnapshot || vol.Spec.FromVolume != want.Spec.FromVolume:
		return status.Errorf(codes.AlreadyExists, "volume %s exists with other parameters or content source", vol.Name)
	}
	return nil
}

// csiVolume describes a Volume to the CO. It reports no accessible
// topology: a Cairn volume attaches on any node (see doc.go).
func csiVolume(vol *v1.Volume) *csi.Volume {
	out := &csi.Volume{VolumeId: vol.Name, CapacityBytes: vol.Spec.Size.Value()}
	if id := vol.Annotations[AnnotationSnapshotID]; id != "" {
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
	}
	if src := vol.Spec.FromVolume; src != "" {
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: string(src)}}}
	}
	return out
}

// DeleteVolume deletes the Volume; an unknown id succeeds. A volume still
// published to a node is FailedPrecondition.
func (c *Controller) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	defer c.locks.lock("volume/" + req.GetVolumeId())()
	vol, err := c.getVolume(ctx, req.GetVolumeId())
	if err != nil || vol == nil {
		return &csi.DeleteVolumeResponse{}, err
	}
	if vol.Spec.NodeID != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is published to node %s", vol.Name, vol.Spec.NodeID)
	}
	if err := c.Client.Delete(ctx, vol); client.IgnoreNotFound(err) != nil {
		return nil, apiError(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ValidateVolumeCapabilities confirms capabilities Cairn supports for an
// existing volume.
func (c *Controller) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	vol, err := c.getVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if vol == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", req.GetVolumeId())
	}
	if _, err := parseVolumeParams(req.GetParameters()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	for _, cap := range req.GetVolumeCapabilities() {
		if why := capabilityProblem(cap); why != "" {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: why}, nil
		}
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters()}}, nil
}

// ControllerGetVolume describes a volume and the node it is published to.
func (c *Controller) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	vol, err := c.mustVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeResponse{Volume: csiVolume(vol),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{PublishedNodeIds: publishedNodes(vol)}}, nil
}

// ControllerGetVolumeHealth reports a degraded or faulted volume.
func (c *Controller) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	vol, err := c.mustVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: VolumeHealth(vol)}, nil
}

// mustVolume reads the volume of a request: InvalidArgument without an id,
// NotFound for an unknown one.
func (c *Controller) mustVolume(ctx context.Context, id string) (*v1.Volume, error) {
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	vol, err := c.getVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	if vol == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", id)
	}
	return vol, nil
}

// publishedNodes is the node the volume is published to, if any.
func publishedNodes(vol *v1.Volume) []string {
	if vol.Spec.NodeID == "" {
		return nil
	}
	return []string{vol.Spec.NodeID}
}

// VolumeHealth maps a Volume's robustness to CSI health: degraded
// (fewer healthy replicas than wanted) or inaccessible (faulted).
func VolumeHealth(vol *v1.Volume) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: vol.Name}
	add := func(t csi.VolumeHealthErrorType, reason string) {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: t, Reason: reason})
	}
	switch {
	case vol.Status.State == v1.VolumeFaulted || vol.Status.Robustness == v1.RobustnessFaulted:
		add(csi.VolumeHealthErrorType_INACCESSIBLE, "no healthy replica")
	case vol.Status.Robustness == v1.RobustnessDegraded:
		add(csi.VolumeHealthErrorType_DEGRADED, fmt.Sprintf("%d replicas, fewer healthy than wanted", len(vol.Status.Replicas)))
	}
	return h
}

// ControllerExpandVolume grows spec.size; the node agent grows an attached
// volume's device online, and a filesystem needs NodeExpandVolume.
func (c *Controller) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is required")
	}
	if req.GetVolumeCapability() != nil {
		if err := checkCapability(req.GetVolumeCapability()); err != nil {
			return nil, err
		}
	}
	defer c.locks.lock("volume/" + req.GetVolumeId())()
	vol, err := c.mustVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	size, err := volumeSize(req.GetCapacityRange(), vol.Spec.Size.Value())
	if err != nil {
		return nil, err
	}
	if size > vol.Spec.Size.Value() {
		patch := client.MergeFrom(vol.DeepCopy())
		vol.Spec.Size = *resource.NewQuantity(size, resource.BinarySI)
		if err := c.Client.Patch(ctx, vol, patch); err != nil {
			return nil, apiError(err)
		}
	}
	nodeExpand := req.GetVolumeCapability().GetBlock() == nil
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: nodeExpand}, nil
}
