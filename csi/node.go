package csi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// Node is the CSI node service. It runs in the node agent, which exposes
// each volume attached to the node as a block device (the publish
// context's devicePath); Node formats, mounts and bind-mounts it.
type Node struct {
	csi.UnimplementedNodeServer
	// NodeID is the agent's node name (the CairnNode, spec.nodeID).
	NodeID string
	// Zone is the node's zone, reported as a topology segment when set.
	Zone string
	// Reader reads Volumes and the CairnNode from the API server.
	Reader client.Reader

	locks keyLocks
}

var nodeCaps = []csi.NodeServiceCapability_RPC_Type{
	csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
	csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
}

// NodeGetCapabilities lists what the node service implements.
func (n *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	out := &csi.NodeGetCapabilitiesResponse{}
	for _, t := range nodeCaps {
		out.Capabilities = append(out.Capabilities, &csi.NodeServiceCapability{
			Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return out, nil
}

// NodeGetInfo returns the node name and its topology segments.
func (n *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	seg := map[string]string{TopologyNodeKey: n.NodeID}
	if n.Zone != "" {
		seg[TopologyZoneKey] = n.Zone
	}
	return &csi.NodeGetInfoResponse{NodeId: n.NodeID, AccessibleTopology: &csi.Topology{Segments: seg}}, nil
}

// Ready reports whether the agent registered its CairnNode and it is Ready.
func (n *Node) Ready(ctx context.Context) bool {
	node := &v1.CairnNode{}
	if err := n.Reader.Get(ctx, client.ObjectKey{Name: n.NodeID}, node); err != nil {
		return false
	}
	return meta.IsStatusConditionTrue(node.Status.Conditions, v1.ConditionReady)
}

// volume reads the Volume of a node request: InvalidArgument without an
// id, NotFound for an unknown one.
func (n *Node) volume(ctx context.Context, id string) (*v1.Volume, error) {
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if !isObjectName(id) {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", id)
	}
	vol := &v1.Volume{}
	if err := n.Reader.Get(ctx, client.ObjectKey{Name: id}, vol); err != nil {
		return nil, notFound(err, "volume %q not found", id)
	}
	return vol, nil
}

// NodeStageVolume formats the volume's device if it holds no filesystem
// and mounts it at the staging path; a block volume needs nothing. A
// repeated call (also after an agent restart) finds the existing mount.
func (n *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetStagingTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and staging target path are required")
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	if _, err := n.volume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	dev, err := publishedDevice(req.GetPublishContext())
	if err != nil {
		return nil, err
	}
	defer n.locks.lock(req.GetVolumeId())()
	if req.GetVolumeCapability().GetBlock() != nil {
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if err := n.stageMount(ctx, dev, req.GetStagingTargetPath(), req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// publishedDevice is the block device named in the publish context; it
// must exist (FailedPrecondition: the volume is not attached here).
func publishedDevice(pc map[string]string) (string, error) {
	dev := pc[PublishContextDevicePath]
	if dev == "" {
		return "", status.Errorf(codes.InvalidArgument, "publish context has no %s: publish the volume to this node first", PublishContextDevicePath)
	}
	if !isBlockDevice(dev) {
		return "", status.Errorf(codes.FailedPrecondition, "device %s of the volume is not a block device on this node", dev)
	}
	return dev, nil
}

// stageMount makes a filesystem when the device has none and mounts it.
func (n *Node) stageMount(ctx context.Context, dev, path string, cap *csi.VolumeCapability) error {
	if mounted, err := isMounted(path); err != nil || mounted {
		return internal(err)
	}
	if err := os.MkdirAll(path, 0o750); err != nil {
		return internal(err)
	}
	fs, err := fsTypeOf(ctx, dev)
	if err != nil {
		return internal(err)
	}
	if fs == "" {
		fs = cap.GetMount().GetFsType()
		if fs == "" {
			fs = "ext4"
		}
		if err := mkfs(ctx, fs, dev); err != nil {
			return internal(err)
		}
	}
	opts := slices.Clone(cap.GetMount().GetMountFlags())
	// A volume restored from a snapshot or backup of an xfs volume has its
	// source's UUID, and xfs refuses to mount a second filesystem with a
	// UUID already mounted on the host.
	if fs == "xfs" && !slices.Contains(opts, "nouuid") {
		opts = append(opts, "nouuid")
	}
	if readOnlyMode(cap) {
		opts = append(opts, "ro")
	}
	return internal(mount(ctx, dev, path, fs, opts))
}

// internal wraps an unexpected local failure as Internal.
func internal(err error) error {
	if err == nil {
		return nil
	}
	return status.Error(codes.Internal, err.Error())
}

// NodeUnstageVolume unmounts the staging path; nothing mounted is fine.
func (n *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetStagingTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and staging target path are required")
	}
	defer n.locks.lock(req.GetVolumeId())()
	if err := unmount(req.GetStagingTargetPath()); err != nil {
		return nil, internal(err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume bind-mounts the staged filesystem at the target
// directory, or for raw block the device at the target file; read-only
// when asked.
func (n *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetTargetPath() == "" || req.GetStagingTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id, target path and staging target path are required")
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	if _, err := n.volume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	defer n.locks.lock(req.GetVolumeId())()
	if mounted, err := isMounted(req.GetTargetPath()); err != nil || mounted {
		return &csi.NodePublishVolumeResponse{}, internal(err)
	}
	readOnly := req.GetReadonly() || readOnlyMode(req.GetVolumeCapability())
	var err error
	if req.GetVolumeCapability().GetBlock() != nil {
		err = publishBlock(ctx, req.GetPublishContext(), req.GetTargetPath(), readOnly)
	} else {
		err = publishMount(ctx, req.GetStagingTargetPath(), req.GetTargetPath(), readOnly)
	}
	if err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// publishMount bind-mounts the staging mount at target.
func publishMount(ctx context.Context, staging, target string, readOnly bool) error {
	if mounted, err := isMounted(staging); err != nil || !mounted {
		if err != nil {
			return internal(err)
		}
		return status.Errorf(codes.FailedPrecondition, "volume is not staged at %s", staging)
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return internal(err)
	}
	return internal(bindMount(ctx, staging, target, readOnly))
}

// publishBlock bind-mounts the device node at the target file.
func publishBlock(ctx context.Context, pc map[string]string, target string, readOnly bool) error {
	dev, err := publishedDevice(pc)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return internal(err)
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return internal(err)
	}
	f.Close()
	return internal(bindMount(ctx, dev, target, readOnly))
}

// NodeUnpublishVolume unmounts the target and removes it; a target that
// is not mounted or does not exist is fine.
func (n *Node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and target path are required")
	}
	defer n.locks.lock(req.GetVolumeId())()
	if err := unmount(req.GetTargetPath()); err != nil {
		return nil, internal(err)
	}
	if err := os.Remove(req.GetTargetPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, internal(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeHealth reports a degraded or faulted volume.
func (n *Node) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	vol, err := n.volume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: VolumeHealth(vol)}, nil
}
