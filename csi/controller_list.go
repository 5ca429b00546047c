package csi

import (
	"context"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/apimachinery/pkg/api/meta"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// Topology segments NodeGetInfo reports and GetCapacity filters by.
const (
	TopologyNodeKey = "topology.cairn.dev/node"
	TopologyZoneKey = "topology.cairn.dev/zone"
)

// tokenPrefix starts every pagination token: "next:" and the id of the
// first entry of the next page. Entries are sorted by id, so a token stays
// valid when that entry is deleted meanwhile.
const tokenPrefix = "next:"

// page returns the ids of a page of sorted ids starting at token, and the
// next token. A token the driver did not issue is Aborted, as the spec asks.
func page(ids []string, token string, maxEntries int32) ([]string, string, error) {
	if maxEntries < 0 {
		return nil, "", status.Error(codes.InvalidArgument, "max_entries must not be negative")
	}
	start := 0
	if token != "" {
		from, ok := strings.CutPrefix(token, tokenPrefix)
		if !ok {
			return nil, "", status.Errorf(codes.Aborted, "starting token %q was not issued by this driver", token)
		}
		start, _ = slices.BinarySearch(ids, from)
	}
	ids = ids[start:]
	if maxEntries == 0 || int(maxEntries) >= len(ids) {
		return ids, "", nil
	}
	return ids[:maxEntries], tokenPrefix + ids[maxEntries], nil
}

// ListVolumes lists every Volume not being deleted (read from the API
// server, so a volume just created is listed), sorted by id.
func (c *Controller) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	var list v1.VolumeList
	if err := c.Reader.List(ctx, &list); err != nil {
		return nil, apiError(err)
	}
	byName := map[string]*v1.Volume{}
	var ids []string
	for i := range list.Items {
		if !list.Items[i].DeletionTimestamp.IsZero() {
			continue
		}
		byName[list.Items[i].Name] = &list.Items[i]
		ids = append(ids, list.Items[i].Name)
	}
	slices.Sort(ids)
	ids, next, err := page(ids, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	out := &csi.ListVolumesResponse{NextToken: next}
	for _, id := range ids {
		vol := byName[id]
		out.Entries = append(out.Entries, &csi.ListVolumesResponse_Entry{Volume: csiVolume(vol),
			Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: publishedNodes(vol)}})
	}
	return out, nil
}

// GetCapacity sums the free bytes of the data directories of ready nodes
// matching the topology segments, if given. Unsupported capabilities have
// no capacity.
func (c *Controller) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if _, err := parseVolumeParams(req.GetParameters()); err != nil {
		return nil, err
	}
	for _, cap := range req.GetVolumeCapabilities() {
		if capabilityProblem(cap) != "" {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	var nodes v1.CairnNodeList
	if err := c.Client.List(ctx, &nodes); err != nil {
		return nil, apiError(err)
	}
	var free int64
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if !meta.IsStatusConditionTrue(n.Status.Conditions, v1.ConditionReady) || !inTopology(n, req.GetAccessibleTopology()) {
			continue
		}
		for _, d := range n.Status.Disks {
			if d.Available != nil {
				free += d.Available.Value()
			}
		}
	}
	return &csi.GetCapacityResponse{AvailableCapacity: free, MaximumVolumeSize: wrapperspb.Int64(maxSize), MinimumVolumeSize: wrapperspb.Int64(sizeUnit)}, nil
}

// inTopology reports whether node n has every segment of t.
func inTopology(n *v1.CairnNode, t *csi.Topology) bool {
	for k, v := range t.GetSegments() {
		switch {
		case k == TopologyNodeKey && v == n.Name:
		case k == TopologyZoneKey && v == n.Status.Zone:
		default:
			return false
		}
	}
	return true
}
