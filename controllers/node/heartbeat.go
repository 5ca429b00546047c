package node

import (
	"context"
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=cairnnodes,verbs=get;create
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=cairnnodes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;create;update,namespace=cairn-system

// Heartbeat registers the node's CairnNode and, every HeartbeatInterval,
// renews its Lease and reports disks, zone and readiness. It runs on every
// agent (no leader election).
type Heartbeat struct {
	Client client.Client
	Agent  *Agent

	lastReport time.Time
}

// reportEvery bounds how long the CairnNode status goes unpatched when
// nothing but free space changed (the Lease carries liveness).
const reportEvery = 30 * time.Second

// NeedLeaderElection: every node agent heartbeats.
func (h *Heartbeat) NeedLeaderElection() bool { return false }

// Start beats until ctx is done; failures are logged and retried.
func (h *Heartbeat) Start(ctx context.Context) error {
	log := h.Agent.opts.Log.WithName("heartbeat")
	t := time.NewTicker(h.Agent.opts.HeartbeatInterval)
	defer t.Stop()
	for {
		if err := h.beat(ctx); err != nil && ctx.Err() == nil {
			log.Error(err, "Heartbeat failed")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// beat renews the Lease, then the CairnNode status.
func (h *Heartbeat) beat(ctx context.Context) error {
	now := metav1.NowMicro()
	return errors.Join(h.renewLease(ctx, now), h.reportNode(ctx, metav1.NewTime(now.Time)))
}

// renewLease creates or renews the Lease cairn-system/cairn-node-<name>.
func (h *Heartbeat) renewLease(ctx context.Context, now metav1.MicroTime) error {
	name := h.Agent.opts.Name
	lease := &coordinationv1.Lease{}
	err := h.Client.Get(ctx, client.ObjectKey{Namespace: SystemNamespace, Name: LeasePrefix + name}, lease)
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: SystemNamespace, Name: LeasePrefix + name},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: ptr.To(name), LeaseDurationSeconds: ptr.To[int32](LeaseDurationSeconds),
				AcquireTime: &now, RenewTime: &now,
			},
		}
		return h.Client.Create(ctx, lease)
	}
	if err != nil {
		return err
	}
	lease.Spec.HolderIdentity = ptr.To(name)
	lease.Spec.LeaseDurationSeconds = ptr.To[int32](LeaseDurationSeconds)
	lease.Spec.RenewTime = &now
	return h.Client.Update(ctx, lease)
}

// reportNode creates the CairnNode if missing (its spec belongs to users)
// and patches its status.
func (h *Heartbeat) reportNode(ctx context.Context, now metav1.Time) error {
	node := &cairnv1.CairnNode{}
	err := h.Client.Get(ctx, client.ObjectKey{Name: h.Agent.opts.Name}, node)
	if apierrors.IsNotFound(err) {
		node = &cairnv1.CairnNode{ObjectMeta: metav1.ObjectMeta{Name: h.Agent.opts.Name}}
		if err = h.Client.Create(ctx, node); err == nil {
			h.Agent.opts.Log.Info("Registered CairnNode", "node", h.Agent.opts.Name)
		}
	}
	if err != nil {
		return err
	}
	p := newStatusPatcher(h.Client, node)
	before := node.Status.DeepCopy()
	disk, derr := h.Agent.diskStatus()
	setNodeStatus(node, disk, derr, h.Agent.opts.Zone, now)
	if !nodeStatusChanged(before, &node.Status) && now.Sub(h.lastReport) < reportEvery {
		return derr
	}
	if err := p.patch(ctx, node); err != nil {
		return errors.Join(derr, err)
	}
	h.lastReport = now.Time
	return derr
}

// nodeStatusChanged reports a change other than heartbeat time and free
// space.
func nodeStatusChanged(a, b *cairnv1.CairnNodeStatus) bool {
	if a.Zone != b.Zone || a.ObservedGeneration != b.ObservedGeneration || len(a.Disks) != len(b.Disks) || len(a.Conditions) != len(b.Conditions) {
		return true
	}
	for i := range a.Disks {
		if a.Disks[i].Path != b.Disks[i].Path || a.Disks[i].ReplicaCount != b.Disks[i].ReplicaCount {
			return true
		}
	}
	for i := range a.Conditions {
		ac, bc := a.Conditions[i], b.Conditions[i]
		if ac.Type != bc.Type || ac.Status != bc.Status || ac.Reason != bc.Reason || ac.Message != bc.Message {
			return true
		}
	}
	return false
}

// setNodeStatus fills the CairnNode status from one heartbeat.
func setNodeStatus(node *cairnv1.CairnNode, disk cairnv1.NodeDiskStatus, diskErr error, zone string, now metav1.Time) {
	st := &node.Status
	st.Zone = zone
	st.LastHeartbeatTime = &now
	if diskErr != nil {
		applyHealth(&st.Conditions, &st.ObservedGeneration, node.Generation, health{reconciling: true, reason: "DiskUnavailable", message: diskErr.Error()})
		return
	}
	st.Disks = []cairnv1.NodeDiskStatus{disk}
	applyHealth(&st.Conditions, &st.ObservedGeneration, node.Generation, health{ready: true, reason: "Heartbeat", message: "the node agent is running"})
}

// diskStatus measures the data directory's filesystem and counts replicas.
func (a *Agent) diskStatus() (cairnv1.NodeDiskStatus, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(a.opts.DataDir, &fs); err != nil {
		return cairnv1.NodeDiskStatus{}, err
	}
	entries, err := os.ReadDir(a.replicaDir(""))
	if err != nil {
		return cairnv1.NodeDiskStatus{}, err
	}
	bs := int64(fs.Bsize)
	return cairnv1.NodeDiskStatus{
		Path:         a.opts.DataDir,
		Capacity:     resource.NewQuantity(int64(fs.Blocks)*bs, resource.BinarySI),
		Available:    resource.NewQuantity(int64(fs.Bavail)*bs, resource.BinarySI),
		ReplicaCount: int32(len(entries)),
	}, nil
}
