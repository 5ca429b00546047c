package testutil

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// Volumes creates, reads, patches and waits on the Volumes of one cluster
// through a suite's client.
type Volumes struct {
	Client client.Client
	// Wait bounds each wait; Tick is how often a wait reads again.
	Wait, Tick time.Duration
	// Healthy holds further checks of WaitHealthy (a suite's reading of
	// the volume's health by kstatus, ...); nil for none.
	Healthy func(c *assert.CollectT, v *v1.Volume)
}

// Create creates a Volume of size labelled app=APP (what a policy
// selects).
func (vs Volumes) Create(t *testing.T, name, app, size string) {
	t.Helper()
	v := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": app}}}
	v.Spec.Size = resource.MustParse(size)
	require.NoError(t, vs.Client.Create(context.Background(), v))
}

// Get reads a Volume (empty, the error reported to t, when it cannot).
func (vs Volumes) Get(t assert.TestingT, name string) *v1.Volume {
	v := &v1.Volume{}
	assert.NoError(t, vs.Client.Get(context.Background(), client.ObjectKey{Name: name}, v))
	return v
}

// Patch reads a Volume, changes it with mutate and merge-patches it.
func (vs Volumes) Patch(t *testing.T, name string, mutate func(*v1.Volume)) {
	t.Helper()
	Patch(t, vs.Client, &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name}}, mutate)
}

// Patch reads obj's current version (by obj's namespace and name) through
// c into obj, changes it with mutate and merge-patches the change.
func Patch[T client.Object](t testing.TB, c client.Client, obj T, mutate func(T)) {
	t.Helper()
	require.NoError(t, c.Get(context.Background(), client.ObjectKeyFromObject(obj), obj))
	patch := client.MergeFrom(obj.DeepCopyObject().(client.Object))
	mutate(obj)
	require.NoError(t, c.Patch(context.Background(), obj, patch))
}

// WaitHealthy waits until the volume is Ready with its generation
// observed, in state, healthy with n RW replicas (any number when n is 0)
// each on its own node, and passes vs.Healthy; it returns the volume.
func (vs Volumes) WaitHealthy(t *testing.T, name string, state v1.VolumeState, n int) *v1.Volume {
	t.Helper()
	var v *v1.Volume
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v = vs.Get(c, name)
		assert.Equal(c, state, v.Status.State)
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
		if n > 0 {
			assert.Len(c, v.Status.Replicas, n)
		}
		for _, r := range v.Status.Replicas {
			assert.Equal(c, "RW", r.Mode, "replica %s", r.Name)
		}
		assert.Len(c, ReplicaNodes(v), len(v.Status.Replicas), "two replicas share a node")
		assert.True(c, meta.IsStatusConditionTrue(v.Status.Conditions, v1.ConditionReady))
		assert.Equal(c, v.Generation, v.Status.ObservedGeneration)
		if vs.Healthy != nil {
			vs.Healthy(c, v)
		}
	}, vs.Wait, vs.Tick)
	return v
}

// ReplicaNodes is the set of nodes the volume's replicas are on.
func ReplicaNodes(v *v1.Volume) map[string]bool {
	out := map[string]bool{}
	for _, r := range v.Status.Replicas {
		out[r.Node] = true
	}
	return out
}

// Attach sets spec.nodeID and waits for an attached, healthy volume of n
// replicas whose endpoint is a block device; it returns the device.
func (vs Volumes) Attach(t *testing.T, name, node string, n int) string {
	t.Helper()
	vs.Patch(t, name, func(v *v1.Volume) { v.Spec.NodeID = node })
	v := vs.WaitHealthy(t, name, v1.VolumeAttached, n)
	require.Equal(t, node, v.Status.AttachedNode)
	st, err := os.Stat(v.Status.Endpoint)
	require.NoError(t, err)
	require.NotZero(t, st.Mode()&os.ModeDevice, "%s is not a device", v.Status.Endpoint)
	return v.Status.Endpoint
}

// Detach clears spec.nodeID and waits for a detached, healthy volume of n
// replicas.
func (vs Volumes) Detach(t *testing.T, name string, n int) {
	t.Helper()
	vs.Patch(t, name, func(v *v1.Volume) { v.Spec.NodeID = "" })
	vs.WaitHealthy(t, name, v1.VolumeDetached, n)
}

// CreatePolicy creates p and waits until the manager has observed it, so a
// volume created next is placed under it (a volume reconciled before its
// policy reaches the manager's cache is placed without it, and its
// replicas move only once new ones are healthy in an engine).
func (vs Volumes) CreatePolicy(t *testing.T, p *v1.VolumePolicy) {
	t.Helper()
	require.NoError(t, vs.Client.Create(context.Background(), p))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got := &v1.VolumePolicy{}
		assert.NoError(c, vs.Client.Get(context.Background(), client.ObjectKeyFromObject(p), got))
		assert.Equal(c, got.Generation, got.Status.ObservedGeneration)
	}, vs.Wait, vs.Tick)
}
