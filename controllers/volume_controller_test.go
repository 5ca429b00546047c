package controllers_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/testutil"
)

var bg = context.Background()

const wait, tick = 30 * time.Second, 100 * time.Millisecond

// addNode plays a node agent: a live heartbeat Lease, then a CairnNode in
// suite (its label) reporting Ready with a disk.
func addNode(t *testing.T, suite, name, zone string) {
	t.Helper()
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: v1.SystemNamespace, Name: v1.NodeLeasePrefix + name}}
	lease.Spec.HolderIdentity = ptr.To(name)
	lease.Spec.LeaseDurationSeconds = ptr.To[int32](3600)
	lease.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
	require.NoError(t, k8s.Create(bg, lease))
	n := &v1.CairnNode{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"suite": suite}}}
	require.NoError(t, k8s.Create(bg, n))
	avail := resource.MustParse("100Gi")
	patch := client.MergeFrom(n.DeepCopy())
	n.Status.Zone = zone
	n.Status.Disks = []v1.NodeDiskStatus{{Path: "/data", Capacity: &avail, Available: &avail}}
	n.Status.Conditions = []metav1.Condition{{Type: v1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Heartbeat", Message: "test agent", LastTransitionTime: metav1.Now()}}
	require.NoError(t, k8s.Status().Patch(bg, n, patch))
}

// stopHeartbeat makes the node's Lease expired.
func stopHeartbeat(t *testing.T, name string) {
	t.Helper()
	lease := &coordinationv1.Lease{}
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Namespace: v1.SystemNamespace, Name: v1.NodeLeasePrefix + name}, lease))
	lease.Spec.RenewTime = &metav1.MicroTime{Time: time.Now().Add(-2 * time.Hour)}
	require.NoError(t, k8s.Update(bg, lease))
}

func newPolicy(name, suite string, replicas int32) *v1.VolumePolicy {
	p := &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.Replicas = replicas
	p.Spec.Placement = &v1.Placement{Spread: v1.SpreadNode, NodeSelector: map[string]string{"suite": suite}}
	p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"suite": suite}}
	return p
}

// createPolicy creates p and waits until the manager has observed it.
func createPolicy(t *testing.T, p *v1.VolumePolicy) {
	t.Helper()
	testutil.Volumes{Client: k8s, Wait: wait, Tick: tick}.CreatePolicy(t, p)
}

func newVolume(name, suite string) *v1.Volume {
	v := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"suite": suite}}}
	v.Spec.Size = resource.MustParse("1Gi")
	return v
}

func replicasOf(t assert.TestingT, vol string) []v1.Replica {
	var list v1.ReplicaList
	assert.NoError(t, k8s.List(bg, &list, client.MatchingLabels{v1.LabelVolume: vol}))
	var live []v1.Replica
	for _, r := range list.Items {
		if r.DeletionTimestamp.IsZero() {
			live = append(live, r)
		}
	}
	return live
}

func nodesOf(reps []v1.Replica) map[string]bool {
	out := map[string]bool{}
	for _, r := range reps {
		out[r.Spec.NodeID] = true
	}
	return out
}

var nextPort atomic.Int32

// playAgents reports every replica of vol as running with an address, as
// the node agents would.
func playAgents(t *testing.T, vol string) {
	t.Helper()
	for _, r := range replicasOf(t, vol) {
		if r.Status.Address != "" {
			continue
		}
		r.Status.State, r.Status.Address = "Running", fmt.Sprintf("127.0.0.1:%d", 10000+nextPort.Add(1))
		require.NoError(t, client.IgnoreNotFound(k8s.Status().Update(bg, &r)))
	}
}

func getVolume(t assert.TestingT, name string) *v1.Volume {
	v := &v1.Volume{}
	assert.NoError(t, k8s.Get(bg, client.ObjectKey{Name: name}, v))
	return v
}

func ready(conds []metav1.Condition) bool {
	return meta.IsStatusConditionTrue(conds, v1.ConditionReady)
}

// current runs kstatus (what Flux's health check uses) on an object.
func current(t assert.TestingT, obj client.Object) bool {
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if !assert.NoError(t, err) {
		return false
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: u})
	return assert.NoError(t, err) && res.Status == status.CurrentStatus
}

// TestVolumeLifecycle: a policy places three replicas on three nodes with a
// token; attaching creates the engine on the node; the volume is Ready and
// kstatus-Current once agents report; detaching and deleting clean up.
func TestVolumeLifecycle(t *testing.T) {
	t.Parallel()
	const suite = "lifecycle"
	for i := 1; i <= 3; i++ {
		addNode(t, suite, fmt.Sprintf("lc-%d", i), "z")
	}
	p := newPolicy("lc-gold", suite, 3)
	p.Spec.StorageClass = &v1.StorageClassTemplate{Name: "lc-gold", FSType: "xfs"}
	createPolicy(t, p)
	vol := newVolume("lc-vol", suite)
	require.NoError(t, k8s.Create(bg, vol))

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		reps := replicasOf(c, vol.Name)
		assert.Len(c, reps, 3)
		assert.Len(c, nodesOf(reps), 3, "two replicas on one node")
	}, wait, tick)
	tok := &corev1.Secret{}
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Namespace: v1.SystemNamespace, Name: v1.TokenSecretName(vol.Name)}, tok))
	raw, err := hex.DecodeString(string(tok.Data[v1.TokenKey]))
	require.NoError(t, err)
	require.Len(t, raw, 32)

	playAgents(t, vol.Name)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := getVolume(c, vol.Name)
		assert.Equal(c, "lc-gold", v.Status.EffectivePolicy)
		assert.Equal(c, v1.VolumeDetached, v.Status.State)
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
		assert.True(c, ready(v.Status.Conditions))
		assert.True(c, current(c, v))
	}, wait, tick)
	require.Equal(t, 1.0, gauge(t, "cairn_volume_robustness", "volume", vol.Name), "healthy")
	require.Equal(t, 3.0, gauge(t, "cairn_volume_replicas", "volume", vol.Name, "state", "RW"))
	sc := &storagev1.StorageClass{}
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Name: "lc-gold"}, sc))
	require.Equal(t, "csi.cairn.dev", sc.Provisioner)
	require.Equal(t, map[string]string{"policy": "lc-gold", "csi.storage.k8s.io/fstype": "xfs"}, sc.Parameters)
	require.Equal(t, storagev1.VolumeBindingImmediate, *sc.VolumeBindingMode, "a PVC binds without a consumer")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		pol := &v1.VolumePolicy{}
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: p.Name}, pol))
		assert.EqualValues(c, 1, pol.Status.HealthyCount)
		assert.True(c, current(c, pol))
	}, wait, tick)

	attach(t, vol.Name, "lc-2")
	eng := &v1.Engine{}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: vol.Name}, eng))
		assert.Equal(c, "lc-2", eng.Spec.NodeID)
		assert.Len(c, eng.Spec.Replicas, 3)
		assert.Equal(c, v1.VolumeAttaching, getVolume(c, vol.Name).Status.State)
	}, wait, tick)
	eng.Status.State, eng.Status.Endpoint = "Running", "/dev/loop42"
	eng.Status.ReplicaModes = map[string]string{}
	for _, r := range eng.Spec.Replicas {
		eng.Status.ReplicaModes[r] = "healthy"
	}
	require.NoError(t, k8s.Status().Update(bg, eng))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := getVolume(c, vol.Name)
		assert.Equal(c, v1.VolumeAttached, v.Status.State)
		assert.Equal(c, "/dev/loop42", v.Status.Endpoint)
		assert.Equal(c, "lc-2", v.Status.AttachedNode)
		assert.True(c, ready(v.Status.Conditions))
	}, wait, tick)

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var evs eventsv1.EventList
		assert.NoError(c, k8s.List(bg, &evs))
		reasons := map[string]bool{}
		for _, e := range evs.Items {
			if e.Regarding.Name == vol.Name {
				reasons[e.Reason] = true
			}
		}
		for _, r := range []string{"ReplicaScheduled", "Attaching", "Attached", "RobustnessHealthy"} {
			assert.True(c, reasons[r], "no %s event for the volume (have %v)", r, reasons)
		}
	}, wait, tick)

	attach(t, vol.Name, "")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		err := k8s.Get(bg, client.ObjectKey{Name: vol.Name}, &v1.Engine{})
		assert.True(c, apierrors.IsNotFound(err), "engine still there: %v", err)
		assert.Equal(c, v1.VolumeDetached, getVolume(c, vol.Name).Status.State)
	}, wait, tick)

	require.NoError(t, k8s.Delete(bg, vol))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, client.ObjectKey{Name: vol.Name}, &v1.Volume{})))
		assert.Empty(c, replicasOf(c, vol.Name))
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, client.ObjectKey{Namespace: v1.SystemNamespace, Name: v1.TokenSecretName(vol.Name)}, &corev1.Secret{})))
	}, wait, tick)
}

// gauge reads a gauge with the given label values from the manager's registry.
func gauge(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

func attach(t *testing.T, vol, node string) {
	t.Helper()
	v := getVolume(t, vol)
	patch := client.MergeFrom(v.DeepCopy())
	v.Spec.NodeID = node
	require.NoError(t, k8s.Patch(bg, v, patch))
}

// TestReplenishAndScale: a node that stops its heartbeat loses its replica
// to a spare node after the replenish wait; the count follows the policy
// down and up, never two replicas on one node.
func TestReplenishAndScale(t *testing.T) {
	t.Parallel()
	const suite = "replenish"
	for i := 1; i <= 4; i++ {
		addNode(t, suite, fmt.Sprintf("rp-%d", i), "z")
	}
	p := newPolicy("rp-policy", suite, 3)
	p.Spec.ReplenishWait = &metav1.Duration{Duration: 2 * time.Second}
	createPolicy(t, p)
	vol := newVolume("rp-vol", suite)
	require.NoError(t, k8s.Create(bg, vol))
	var lostNode string
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		reps := replicasOf(c, vol.Name)
		if assert.Len(c, reps, 3) {
			lostNode = reps[0].Spec.NodeID
		}
	}, wait, tick)
	playAgents(t, vol.Name)

	stopHeartbeat(t, lostNode)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		reps := replicasOf(c, vol.Name)
		nodes := nodesOf(reps)
		assert.Len(c, reps, 3)
		assert.Len(c, nodes, 3)
		assert.False(c, nodes[lostNode], "the lost node still holds a replica")
	}, wait, tick)

	setReplicas(t, p.Name, 2)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Len(c, replicasOf(c, vol.Name), 2)
	}, wait, tick)
	setReplicas(t, p.Name, 3)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		reps := replicasOf(c, vol.Name)
		assert.Len(c, reps, 3)
		assert.Len(c, nodesOf(reps), 3)
	}, wait, tick)
	// more replicas than ready nodes: degraded with a precise condition
	setReplicas(t, p.Name, 4)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := getVolume(c, vol.Name)
		cond := meta.FindStatusCondition(v.Status.Conditions, "ReplicaScheduling")
		if assert.NotNil(c, cond) {
			assert.Contains(c, cond.Message, "1 more replicas needed")
		}
		assert.Len(c, replicasOf(c, vol.Name), 3)
	}, wait, tick)
	// back to what the nodes allow: the condition goes
	setReplicas(t, p.Name, 3)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Nil(c, meta.FindStatusCondition(getVolume(c, vol.Name).Status.Conditions, "ReplicaScheduling"))
	}, wait, tick)
}

func setReplicas(t *testing.T, policy string, n int32) {
	t.Helper()
	patchPolicy(t, policy, func(p *v1.VolumePolicy) { p.Spec.Replicas = n })
}

// TestPolicyErrors: bad input the schema lets through ends in a precise
// condition, and deleting a policy deletes nothing.
func TestPolicyErrors(t *testing.T) {
	t.Parallel()
	const suite = "errors"
	for i := 1; i <= 2; i++ {
		addNode(t, suite, fmt.Sprintf("pe-%d", i), "z")
	}
	missing := newVolume("pe-missing", "none")
	missing.Spec.PolicyRef = "no-such-policy"
	require.NoError(t, k8s.Create(bg, missing))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := getVolume(c, missing.Name)
		cond := meta.FindStatusCondition(v.Status.Conditions, v1.ConditionStalled)
		if assert.NotNil(c, cond) {
			assert.Equal(c, "PolicyNotFound", cond.Reason)
			assert.Contains(c, cond.Message, "no-such-policy")
		}
	}, wait, tick)

	nowhere := newPolicy("pe-nowhere", suite, 2)
	nowhere.Spec.Placement.NodeSelector = map[string]string{"suite": "no-such-nodes"}
	nowhere.Spec.Selector.MatchLabels = map[string]string{"suite": "pe-nowhere"}
	createPolicy(t, nowhere)
	vn := newVolume("pe-nowhere-vol", "pe-nowhere")
	require.NoError(t, k8s.Create(bg, vn))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := getVolume(c, vn.Name)
		cond := meta.FindStatusCondition(v.Status.Conditions, v1.ConditionStalled)
		if assert.NotNil(c, cond) {
			assert.Equal(c, "NotEnoughNodes", cond.Reason)
			assert.Contains(c, cond.Message, "do not match the nodeSelector")
		}
	}, wait, tick)

	a, b := newPolicy("pe-a", suite, 2), newPolicy("pe-b", suite, 1)
	createPolicy(t, a)
	createPolicy(t, b)
	vol := newVolume("pe-vol", suite)
	require.NoError(t, k8s.Create(bg, vol))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := getVolume(c, vol.Name)
		assert.Equal(c, "pe-a", v.Status.EffectivePolicy)
		assert.True(c, meta.IsStatusConditionTrue(v.Status.Conditions, "PolicyConflict"))
		for _, name := range []string{"pe-a", "pe-b"} {
			pol := &v1.VolumePolicy{}
			assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: name}, pol))
			assert.True(c, meta.IsStatusConditionTrue(pol.Status.Conditions, "PolicyConflict"), name)
		}
		assert.Len(c, replicasOf(c, vol.Name), 2)
	}, wait, tick)
	playAgents(t, vol.Name)
	before := replicasOf(t, vol.Name)

	// policyRef to pe-b, then delete pe-b: the volume keeps its replicas
	v := getVolume(t, vol.Name)
	patch := client.MergeFrom(v.DeepCopy())
	v.Spec.PolicyRef = "pe-b"
	v.Spec.Replicas = ptr.To[int32](2)
	require.NoError(t, k8s.Patch(bg, v, patch))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, "pe-b", getVolume(c, vol.Name).Status.EffectivePolicy)
	}, wait, tick)
	require.NoError(t, k8s.Delete(bg, b))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := getVolume(c, vol.Name)
		cond := meta.FindStatusCondition(v.Status.Conditions, "PolicyDeleted")
		if assert.NotNil(c, cond) {
			assert.True(c, strings.Contains(cond.Message, "pe-b"))
		}
		assert.True(c, ready(v.Status.Conditions))
	}, wait, tick)
	require.ElementsMatch(t, names(before), names(replicasOf(t, vol.Name)))
}

func names(reps []v1.Replica) []string {
	var out []string
	for _, r := range reps {
		out = append(out, r.Name)
	}
	return out
}

// TestReplicaMigration: when the policy's nodeSelector stops admitting the
// nodes a volume's replicas are on, new replicas are placed on admitted
// nodes and the old ones are removed only once the new ones are healthy in
// the engine; a detached volume keeps its old replicas beside the new ones.
func TestReplicaMigration(t *testing.T) {
	t.Parallel()
	const suite = "migrate"
	tiers := map[string]string{"mg-1": "old", "mg-2": "old", "mg-3": "new", "mg-4": "new"}
	for name, tier := range tiers {
		addNode(t, suite, name, "z")
		testutil.Patch(t, k8s, &v1.CairnNode{ObjectMeta: metav1.ObjectMeta{Name: name}}, func(n *v1.CairnNode) { n.Labels["tier"] = tier })
	}
	p := newPolicy("mg-policy", suite, 2)
	p.Spec.Placement.NodeSelector["tier"] = "old"
	createPolicy(t, p)
	idle := newVolume("mg-idle", suite)
	require.NoError(t, k8s.Create(bg, idle))
	vol := healthyVolume(t, "mg-vol", suite, "mg-1", "mg-2")
	waitReplicaNodes(t, idle.Name, "mg-1", "mg-2")
	playAgents(t, idle.Name)

	patchPolicy(t, p.Name, func(p *v1.VolumePolicy) { p.Spec.Placement.NodeSelector["tier"] = "new" })
	for _, name := range []string{vol, idle.Name} {
		waitReplicaNodes(t, name, "mg-1", "mg-2", "mg-3", "mg-4")
		playAgents(t, name)
	}
	// The new replicas rebuild: the old ones stay.
	old := map[string]bool{"mg-1": true, "mg-2": true}
	replaceWhenHealthy(t, vol, func(node string) bool { return !old[node] })
	waitReplicaNodes(t, vol, "mg-3", "mg-4")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		eng := &v1.Engine{}
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: vol}, eng))
		assert.Len(c, eng.Spec.Replicas, 2)
		assert.Nil(c, meta.FindStatusCondition(getVolume(c, vol).Status.Conditions, "ReplicasMoving"))
	}, wait, tick)
	// Detached: nothing fills the new replicas, so the old ones stay.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := getVolume(c, idle.Name)
		assert.Len(c, v.Status.Replicas, 4)
		if cond := meta.FindStatusCondition(v.Status.Conditions, "ReplicasMoving"); assert.NotNil(c, cond) {
			assert.Contains(c, cond.Message, "2 replicas move once 2 replicas are healthy elsewhere")
			assert.Contains(c, cond.Message, "when it is next attached")
		}
	}, wait, tick)
	assert.Len(t, replicasOf(t, idle.Name), 4)
}

// TestZoneSpreadChange: a policy switched from node to zone spread moves
// one of two replicas that share a zone to another zone, removing the old
// one only once the new one is healthy.
func TestZoneSpreadChange(t *testing.T) {
	t.Parallel()
	const suite = "zonespread"
	addNode(t, suite, "zs-1", "a")
	addNode(t, suite, "zs-2", "a")
	createPolicy(t, newPolicy("zs-policy", suite, 2))
	vol := healthyVolume(t, "zs-vol", suite, "zs-1", "zs-2")
	addNode(t, suite, "zs-3", "b")

	patchPolicy(t, "zs-policy", func(p *v1.VolumePolicy) { p.Spec.Placement.Spread = v1.SpreadZone })
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Len(c, nodesOf(replicasOf(c, vol)), 3)
	}, wait, tick)
	playAgents(t, vol)
	replaceWhenHealthy(t, vol, func(node string) bool { return node == "zs-3" })
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		nodes := nodesOf(replicasOf(c, vol))
		assert.Len(c, nodes, 2)
		assert.True(c, nodes["zs-3"], "the replica in zone b went")
	}, wait, tick)
}

// TestNodeEviction: evictionRequested on a node moves its replica to a
// spare node (never placing one there meanwhile) and removes it once the
// replacement is healthy, with an event saying why.
func TestNodeEviction(t *testing.T) {
	t.Parallel()
	const suite = "evict"
	addNode(t, suite, "ev-1", "z")
	addNode(t, suite, "ev-2", "z")
	createPolicy(t, newPolicy("ev-policy", suite, 2))
	vol := healthyVolume(t, "ev-vol", suite, "ev-1", "ev-2")
	addNode(t, suite, "ev-3", "z")

	testutil.Patch(t, k8s, &v1.CairnNode{ObjectMeta: metav1.ObjectMeta{Name: "ev-1"}}, func(n *v1.CairnNode) { n.Spec.EvictionRequested = true })
	waitReplicaNodes(t, vol, "ev-1", "ev-2", "ev-3")
	playAgents(t, vol)
	replaceWhenHealthy(t, vol, func(node string) bool { return node == "ev-3" })
	waitReplicaNodes(t, vol, "ev-2", "ev-3")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var evs eventsv1.EventList
		assert.NoError(c, k8s.List(bg, &evs))
		found := false
		for _, e := range evs.Items {
			found = found || e.Regarding.Name == vol && e.Reason == "ReplicaRemoved" && strings.Contains(e.Note, "its node is being evicted")
		}
		assert.True(c, found, "no ReplicaRemoved event naming the eviction")
	}, wait, tick)
}

// healthyVolume creates volume name in suite, waits until its replicas are
// on exactly nodes, attaches it to the first and reports every replica
// healthy.
func healthyVolume(t *testing.T, name, suite string, nodes ...string) string {
	t.Helper()
	require.NoError(t, k8s.Create(bg, newVolume(name, suite)))
	waitReplicaNodes(t, name, nodes...)
	playAgents(t, name)
	attach(t, name, nodes[0])
	setModes(t, name, func(string) string { return "healthy" }, len(nodes))
	return name
}

// replaceWhenHealthy plays a rebuild of the volume's new replicas (those
// on nodes isNew takes): while they are WO every replica stays; then they
// are reported healthy.
func replaceWhenHealthy(t *testing.T, vol string, isNew func(node string) bool) {
	t.Helper()
	reps := replicasOf(t, vol)
	nodeOf := map[string]string{}
	want := map[string]string{}
	for _, rep := range reps {
		nodeOf[rep.Status.Address] = rep.Spec.NodeID
		want[rep.Spec.NodeID] = "RW"
		if isNew(rep.Spec.NodeID) {
			want[rep.Spec.NodeID] = "WO"
		}
	}
	setModes(t, vol, func(addr string) string {
		if isNew(nodeOf[addr]) {
			return "rebuilding"
		}
		return "healthy"
	}, len(reps))
	// The status shows the reconcile that saw the modes, which ran
	// placement first: nothing was removed.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := getVolume(c, vol)
		modes := map[string]string{}
		for _, r := range v.Status.Replicas {
			modes[r.Node] = r.Mode
		}
		assert.Equal(c, want, modes)
		assert.True(c, meta.IsStatusConditionTrue(v.Status.Conditions, "ReplicasMoving"))
	}, wait, tick)
	assert.Len(t, replicasOf(t, vol), len(reps), "a replica went before its replacement was healthy")
	setModes(t, vol, func(string) string { return "healthy" }, len(reps))
}

// waitReplicaNodes waits until the volume's live replicas are on exactly nodes.
func waitReplicaNodes(t *testing.T, vol string, nodes ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, n := range nodes {
		want[n] = true
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, want, nodesOf(replicasOf(c, vol)))
	}, wait, tick)
}

func patchPolicy(t *testing.T, name string, mutate func(*v1.VolumePolicy)) {
	t.Helper()
	testutil.Patch(t, k8s, &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}, mutate)
}

// setModes waits until vol's engine lists n replicas, then reports it
// running with each replica in the mode mode(address) gives.
func setModes(t *testing.T, vol string, mode func(addr string) string, n int) {
	t.Helper()
	eng := &v1.Engine{}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: vol}, eng))
		assert.Len(c, eng.Spec.Replicas, n)
	}, wait, tick)
	eng.Status.State, eng.Status.Endpoint = "Running", "/dev/loop43"
	eng.Status.ReplicaModes = map[string]string{}
	for _, r := range eng.Spec.Replicas {
		eng.Status.ReplicaModes[r] = mode(r)
	}
	require.NoError(t, k8s.Status().Update(bg, eng))
}
