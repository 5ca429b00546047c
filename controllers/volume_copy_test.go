package controllers_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// restoredCondition is the Volume's Restored condition (empty when unset).
func restoredCondition(t assert.TestingT, vol string) metav1.Condition {
	if c := meta.FindStatusCondition(getVolume(t, vol).Status.Conditions, v1.ConditionRestored); c != nil {
		return *c
	}
	return metav1.Condition{}
}

// takeSnapshotAsAgent reports the Snapshot taken, as the node agent would.
func takeSnapshotAsAgent(t assert.TestingT, name string) {
	s := &v1.Snapshot{}
	if !assert.NoError(t, k8s.Get(bg, client.ObjectKey{Name: name}, s)) {
		return
	}
	s.Status.ReadyToUse, s.Status.RestoreSize = true, resource.NewQuantity(1<<30, resource.BinarySI)
	assert.NoError(t, k8s.Status().Update(bg, s))
}

// copyAsAgents reports every replica of vol filled with src, as the node
// agents would after the copy.
func copyAsAgents(t *testing.T, vol string, src v1.SnapshotSource) {
	t.Helper()
	for _, r := range replicasOf(t, vol) {
		require.Equal(t, &src, r.Spec.CopyFrom, "replica %s", r.Name)
		r.Status.CopiedSnapshot = src.Volume + "/" + src.Snapshot
		r.Status.State, r.Status.Address = "Running", fmt.Sprintf("127.0.0.1:%d", 10000+nextPort.Add(1))
		require.NoError(t, k8s.Status().Update(bg, &r))
	}
}

// maintenanceEngine reports whether vol has an Engine without a frontend.
func maintenanceEngine(t assert.TestingT, vol string) bool {
	eng := &v1.Engine{}
	err := k8s.Get(bg, client.ObjectKey{Name: vol}, eng)
	if apierrors.IsNotFound(err) || !assert.NoError(t, err) {
		return false
	}
	return eng.DeletionTimestamp.IsZero() && eng.Spec.Frontend == "none"
}

// TestVolumeFromSnapshot: a volume fromSnapshot waits (no replicas) until
// the Snapshot is taken, records it once in status.restoredSnapshot,
// places replicas that copy it, keeps a maintenance engine on the
// detached source meanwhile, and is Restored (and attachable) when every
// replica reports the copy.
func TestVolumeFromSnapshot(t *testing.T) {
	t.Parallel()
	const suite = "fromsnap"
	addNode(t, suite, "fs-1", "z")
	createPolicy(t, newPolicy("fs-policy", suite, 1))
	src := newVolume("fs-src", suite)
	require.NoError(t, k8s.Create(bg, src))
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Len(c, replicasOf(c, src.Name), 1) }, wait, tick)
	playAgents(t, src.Name)

	dst := newVolume("fs-dst", suite)
	dst.Spec.FromSnapshot = "fs-snap"
	require.NoError(t, k8s.Create(bg, dst))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, "WaitingForSnapshot", restoredCondition(c, dst.Name).Reason)
	}, wait, tick)
	assert.Empty(t, replicasOf(t, dst.Name), "replicas placed before the snapshot is known")

	snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: "fs-snap"}, Spec: v1.SnapshotSpec{VolumeName: src.Name}}
	require.NoError(t, k8s.Create(bg, snap))
	require.EventuallyWithT(t, func(c *assert.CollectT) { takeSnapshotAsAgent(c, snap.Name) }, wait, tick)
	want := v1.SnapshotSource{Volume: src.Name, Snapshot: snap.Name}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, &want, getVolume(c, dst.Name).Status.RestoredSnapshot)
		assert.Len(c, replicasOf(c, dst.Name), 1)
		assert.True(c, maintenanceEngine(c, src.Name), "the detached source runs no maintenance engine for the copy")
	}, wait, tick)

	attach(t, dst.Name, "fs-1")
	copyAsAgents(t, dst.Name, want)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, "True", string(restoredCondition(c, dst.Name).Status))
		assert.True(c, engineExists(dst.Name), "no engine once restored")
		assert.False(c, maintenanceEngine(c, src.Name), "the source keeps its maintenance engine after the copy")
	}, wait, tick)
}

func engineExists(vol string) bool {
	return k8s.Get(bg, client.ObjectKey{Name: vol}, &v1.Engine{}) == nil
}

// TestVolumeClone: a volume fromVolume gets a Snapshot of the source taken
// for it (owned by the clone, labelled, without a schedule's label), is
// filled from it, and the snapshot is deleted once the clone is restored.
func TestVolumeClone(t *testing.T) {
	t.Parallel()
	const suite = "clone"
	addNode(t, suite, "cl-1", "z")
	createPolicy(t, newPolicy("cl-policy", suite, 1))
	src := newVolume("cl-src", suite)
	require.NoError(t, k8s.Create(bg, src))
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Len(c, replicasOf(c, src.Name), 1) }, wait, tick)
	playAgents(t, src.Name)

	dst := newVolume("cl-dst", suite)
	dst.Spec.FromVolume = v1.ObjectName(src.Name)
	require.NoError(t, k8s.Create(bg, dst))
	snap := &v1.Snapshot{}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: "clone-cl-dst"}, snap))
	}, wait, tick)
	assert.Equal(t, src.Name, snap.Spec.VolumeName)
	assert.Equal(t, dst.Name, snap.Labels[v1.LabelClone])
	assert.Empty(t, snap.Labels[v1.LabelRecurringSnapshot])
	require.Len(t, snap.OwnerReferences, 1)
	assert.Equal(t, dst.Name, snap.OwnerReferences[0].Name)

	require.EventuallyWithT(t, func(c *assert.CollectT) { takeSnapshotAsAgent(c, snap.Name) }, wait, tick)
	want := v1.SnapshotSource{Volume: src.Name, Snapshot: snap.Name}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, &want, getVolume(c, dst.Name).Status.RestoredSnapshot)
		assert.Len(c, replicasOf(c, dst.Name), 1)
	}, wait, tick)
	copyAsAgents(t, dst.Name, want)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, "True", string(restoredCondition(c, dst.Name).Status))
		err := k8s.Get(bg, client.ObjectKey{Name: snap.Name}, &v1.Snapshot{})
		assert.True(c, apierrors.IsNotFound(err), "clone snapshot not removed: %v", err)
	}, wait, tick)
}

// TestVolumeSourceValidation: the content sources are fixed at creation
// and at most one may be set (CEL, against the real API server).
func TestVolumeSourceValidation(t *testing.T) {
	t.Parallel()
	two := newVolume("src-two", "validation")
	two.Spec.FromSnapshot, two.Spec.FromVolume = "a", "b"
	err := k8s.Create(bg, two)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "at most one of fromBackup, fromSnapshot and fromVolume")

	v := newVolume("src-fixed", "validation")
	v.Spec.FromSnapshot = "a"
	require.NoError(t, k8s.Create(bg, v))
	t.Cleanup(func() { _ = k8s.Delete(bg, v) })
	patch := client.MergeFrom(v.DeepCopy())
	v.Spec.FromSnapshot = "b"
	err = k8s.Patch(bg, v, patch)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "fromSnapshot is set only when the volume is created")
}
