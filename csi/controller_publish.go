package csi

import (
	"context"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// PublishContextDevicePath is the publish_context key holding the block
// device the node agent exposes for the volume.
const PublishContextDevicePath = "devicePath"

// ControllerPublishVolume attaches the volume to a node (spec.nodeID) and
// waits until the node agent reports its block device.
func (c *Controller) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetNodeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and node id are required")
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	defer c.locks.lock("volume/" + req.GetVolumeId())()
	if _, err := c.mustVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	if err := c.checkNode(ctx, req.GetNodeId()); err != nil {
		return nil, err
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error { return c.setNode(ctx, req.GetVolumeId(), req.GetNodeId()) })
	if err != nil {
		return nil, apiError(err)
	}
	vol, err := c.waitVolume(ctx, req.GetVolumeId(), func(v *v1.Volume) bool {
		return v.Status.State == v1.VolumeAttached && v.Status.AttachedNode == req.GetNodeId() && v.Status.Endpoint != ""
	})
	if err != nil {
		return nil, err
	}
	return &csi.ControllerPublishVolumeResponse{PublishContext: map[string]string{PublishContextDevicePath: vol.Status.Endpoint}}, nil
}

// checkNode fails with NotFound when no node agent registered the node.
func (c *Controller) checkNode(ctx context.Context, node string) error {
	if !isObjectName(node) {
		return status.Errorf(codes.NotFound, "node %q not found", node)
	}
	return notFound(c.Reader.Get(ctx, client.ObjectKey{Name: node}, &v1.CairnNode{}), "node %q not found", node)
}

// setNode sets spec.nodeID of the newest version of the volume; a volume
// published elsewhere or kept on standby is FailedPrecondition.
func (c *Controller) setNode(ctx context.Context, name, node string) error {
	vol, err := c.mustVolume(ctx, name)
	if err != nil {
		return err
	}
	switch {
	case !vol.DeletionTimestamp.IsZero():
		return status.Errorf(codes.FailedPrecondition, "volume %s is being deleted", vol.Name)
	case vol.Spec.Standby:
		return status.Errorf(codes.FailedPrecondition, "volume %s is a disaster-recovery standby and cannot be attached", vol.Name)
	case vol.Spec.NodeID == node:
		return nil
	case vol.Spec.NodeID != "":
		return status.Errorf(codes.FailedPrecondition, "volume %s is published to node %s", vol.Name, vol.Spec.NodeID)
	}
	patch := client.MergeFromWithOptions(vol.DeepCopy(), client.MergeFromWithOptimisticLock{})
	vol.Spec.NodeID = node
	return c.Client.Patch(ctx, vol, patch)
}

// ControllerUnpublishVolume clears spec.nodeID and waits until the node
// agent stopped the engine. An unknown volume or one not published to the
// node succeeds.
func (c *Controller) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	defer c.locks.lock("volume/" + req.GetVolumeId())()
	node := req.GetNodeId()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var err error
		node, err = c.clearNode(ctx, req.GetVolumeId(), req.GetNodeId())
		return err
	})
	if err != nil {
		return nil, apiError(err)
	}
	if node == "" {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if err := c.waitDetached(ctx, req.GetVolumeId(), node); err != nil {
		return nil, err
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

// clearNode clears spec.nodeID of the newest version of the volume when it
// names node (any node when node is empty) and returns the node to wait
// for; "" when the volume does not exist.
func (c *Controller) clearNode(ctx context.Context, name, node string) (string, error) {
	vol, err := c.getVolume(ctx, name)
	if err != nil || vol == nil {
		return "", err
	}
	if node == "" {
		node = vol.Spec.NodeID
	}
	if node == "" || vol.Spec.NodeID != node {
		return node, nil
	}
	patch := client.MergeFromWithOptions(vol.DeepCopy(), client.MergeFromWithOptimisticLock{})
	vol.Spec.NodeID = ""
	return node, c.Client.Patch(ctx, vol, patch)
}

// waitDetached waits until no engine of the volume serves a device on node
// and the volume's status no longer names it.
func (c *Controller) waitDetached(ctx context.Context, name, node string) error {
	_, err := c.waitVolume(ctx, name, func(v *v1.Volume) bool {
		if v.Status.AttachedNode == node {
			return false
		}
		e := &v1.Engine{}
		err := c.Client.Get(ctx, client.ObjectKey{Name: name}, e)
		return apierrors.IsNotFound(err) || (err == nil && (e.Spec.NodeID != node || e.Spec.Frontend == "none"))
	})
	if status.Code(err) == codes.NotFound {
		return nil
	}
	return err
}

// waitVolume polls the cached Volume until done returns true, the volume
// is gone (NotFound), ctx ends or AttachTimeout passes (DeadlineExceeded:
// the CO retries, and the retry finds the work in progress).
func (c *Controller) waitVolume(ctx context.Context, name string, done func(*v1.Volume) bool) (*v1.Volume, error) {
	ctx, cancel := context.WithTimeout(ctx, c.attachTimeout())
	defer cancel()
	tick := time.NewTicker(c.pollInterval())
	defer tick.Stop()
	for {
		vol := &v1.Volume{}
		err := c.Client.Get(ctx, client.ObjectKey{Name: name}, vol)
		switch {
		case apierrors.IsNotFound(err):
			return nil, status.Errorf(codes.NotFound, "volume %s was deleted", name)
		case err == nil && done(vol):
			return vol, nil
		}
		select {
		case <-ctx.Done():
			return nil, status.Errorf(codes.DeadlineExceeded, "volume %s: still waiting for the node agent (state %q)", name, vol.Status.State)
		case <-tick.C:
		}
	}
}
