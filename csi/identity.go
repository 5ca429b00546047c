package csi

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cairnstore/cairn/internal/version"
)

// Identity is the CSI identity service. Ready reports whether the process
// can serve (the manager's cache synced, the node agent registered); nil
// means always ready.
type Identity struct {
	csi.UnimplementedIdentityServer
	Ready func(ctx context.Context) bool
}

// GetPluginInfo returns the driver name and Cairn's version.
func (i *Identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: DriverName, VendorVersion: version.String()}, nil
}

// GetPluginCapabilities advertises what the plugin as a whole provides, on
// every endpoint: the controller service (served by the manager),
// accessibility constraints and online expansion.
func (i *Identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	caps := []*csi.PluginCapability{
		serviceCap(csi.PluginCapability_Service_CONTROLLER_SERVICE),
		serviceCap(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		{Type: &csi.PluginCapability_VolumeExpansion_{
			VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

func serviceCap(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
	return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
}

// Probe reports Ready.
func (i *Identity) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	ready := i.Ready == nil || i.Ready(ctx)
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(ready)}, nil
}
