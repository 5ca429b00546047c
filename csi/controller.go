package csi

import (
	"context"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// The CSI controller service reads and writes Cairn's objects; it only
// creates what it owns (Volumes, Snapshots, Backups named for CSI requests).
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumes,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=snapshots;backups,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=engines;cairnnodes;volumepolicies;backuptargets,verbs=get;list;watch

// Controller is the CSI controller service. It runs in the manager and
// works only through the API server: Volumes, Snapshots and Backups.
type Controller struct {
	csi.UnimplementedControllerServer
	// Client is the manager's (cached) client; waits and lists read it.
	Client client.Client
	// Reader reads the API server directly where a create must see the
	// newest state (the manager's API reader).
	Reader client.Reader
	// AttachTimeout bounds how long ControllerPublish and Unpublish wait
	// for the node agent (default 2 minutes); the CO retries after it.
	AttachTimeout time.Duration
	// PollInterval is how often waits look again (default 250ms).
	PollInterval time.Duration

	locks keyLocks
}

var controllerCaps = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES_PUBLISHED_NODES,
	csi.ControllerServiceCapability_RPC_GET_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
}

// ControllerGetCapabilities lists what the controller service implements.
func (c *Controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	out := &csi.ControllerGetCapabilitiesResponse{}
	for _, t := range controllerCaps {
		out.Capabilities = append(out.Capabilities, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return out, nil
}

func (c *Controller) attachTimeout() time.Duration {
	if c.AttachTimeout > 0 {
		return c.AttachTimeout
	}
	return 2 * time.Minute
}

func (c *Controller) pollInterval() time.Duration {
	if c.PollInterval > 0 {
		return c.PollInterval
	}
	return 250 * time.Millisecond
}

// getVolume reads a Volume from the API server; nil when it does not exist
// (an id that cannot name an object does not exist either).
func (c *Controller) getVolume(ctx context.Context, id string) (*v1.Volume, error) {
	if !isObjectName(id) {
		return nil, nil
	}
	vol := &v1.Volume{}
	err := c.Reader.Get(ctx, client.ObjectKey{Name: id}, vol)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, apiError(err)
	}
	return vol, nil
}
