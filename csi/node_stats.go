package csi

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NodeGetVolumeStats reports bytes and inodes of a mounted volume
// (statfs), or the size of a raw block volume.
func (n *Node) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	if _, err := n.volume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	path := req.GetVolumePath()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "volume path %s does not exist", path)
	}
	if isBlockDevice(path) {
		size, err := blockSize(path)
		if err != nil {
			return nil, internal(err)
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	if mounted, err := isMounted(path); err != nil || !mounted {
		if err != nil {
			return nil, internal(err)
		}
		return nil, status.Errorf(codes.NotFound, "volume %s is not mounted at %s", req.GetVolumeId(), path)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, internal(err)
	}
	bs := st.Bsize
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
	}}, nil
}

// NodeExpandVolume grows the filesystem mounted at the volume path
// (resize2fs, xfs_growfs) once the device has grown to the required size;
// a raw block volume needs nothing.
func (n *Node) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and volume path are required")
	}
	if req.GetVolumeCapability() != nil {
		if err := checkCapability(req.GetVolumeCapability()); err != nil {
			return nil, err
		}
	}
	if _, err := n.volume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	defer n.locks.lock(req.GetVolumeId())()
	path := req.GetVolumePath()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "volume path %s does not exist", path)
	}
	if req.GetVolumeCapability().GetBlock() != nil || isBlockDevice(path) {
		return &csi.NodeExpandVolumeResponse{CapacityBytes: req.GetCapacityRange().GetRequiredBytes()}, nil
	}
	m, ok, err := findMount(path)
	if err != nil || !ok {
		if err != nil {
			return nil, internal(err)
		}
		return nil, status.Errorf(codes.NotFound, "volume %s is not mounted at %s", req.GetVolumeId(), path)
	}
	size, err := waitDeviceSize(ctx, m.source, req.GetCapacityRange().GetRequiredBytes())
	if err != nil {
		return nil, err
	}
	if err := growFS(ctx, m); err != nil {
		return nil, internal(err)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// waitDeviceSize waits (up to 2 minutes) until the device has grown to at
// least want bytes: the node agent grows it after the controller grew the
// Volume. Unavailable when it has not (the CO retries).
func waitDeviceSize(ctx context.Context, dev string, want int64) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		size, err := blockSize(dev)
		if err != nil {
			return 0, internal(err)
		}
		if size >= want {
			return size, nil
		}
		select {
		case <-ctx.Done():
			return 0, status.Errorf(codes.Unavailable, "device %s is %d bytes, not yet %d", dev, size, want)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// growFS grows a mounted ext4 or xfs filesystem to its device's size.
func growFS(ctx context.Context, m mountEntry) error {
	if m.fsType == "xfs" {
		return run(ctx, "xfs_growfs", m.point)
	}
	return run(ctx, "resize2fs", m.source)
}
