package csi

import (
	"context"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
)

// AddController adds a Server to the manager that serves the identity and
// controller services at endpoint. Probe is ready once the manager's cache
// has synced.
func AddController(mgr ctrl.Manager, endpoint string) error {
	c := &Controller{Client: mgr.GetClient(), Reader: mgr.GetAPIReader()}
	ready := func(ctx context.Context) bool {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return mgr.GetCache().WaitForCacheSync(ctx)
	}
	return mgr.Add(&Server{Endpoint: endpoint, Controller: c, Identity: &Identity{Ready: ready},
		Log: mgr.GetLogger().WithName("csi-controller")})
}

// AddNode adds a Server to the node agent's manager that serves the
// identity and node services of node (in zone) at endpoint. Probe is ready
// once the agent's CairnNode is Ready.
func AddNode(mgr ctrl.Manager, endpoint, node, zone string) error {
	n := &Node{NodeID: node, Zone: zone, Reader: mgr.GetAPIReader()}
	return mgr.Add(&Server{Endpoint: endpoint, Node: n, Identity: &Identity{Ready: n.Ready},
		Log: mgr.GetLogger().WithName("csi-node")})
}
