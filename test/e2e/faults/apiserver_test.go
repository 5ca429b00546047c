//go:build faults

package faults

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/meta"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestEngineNodeCutFromAPIServer cuts the engine's node off from the API
// server but not from its replicas: I/O goes on, the node is seen NotReady,
// no second engine starts anywhere while fio keeps writing, and after the
// heal the status converges on the same single engine.
func TestEngineNodeCutFromAPIServer(t *testing.T) {
	const vol, node = "fault-apiserver", "dev-node-1"
	newVolume(t, vol, "256Mi", 3, 5*time.Second)
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 3)
	blk := vols.Attach(t, vol, node, 3)
	engines := dev.Procs("cairn engine", "--volume "+vol+" ")
	require.Len(t, engines, 1)

	w := startWriter(t, blk, 4, 16<<20)
	w.waitPasses(t, 1)
	require.NoError(t, network.CutHost(node))
	cut := true
	defer func() {
		if cut {
			_ = network.HealHost(node)
		}
	}()
	detect := waitFor(t, "the node was not seen NotReady", func(c *assert.CollectT) {
		n := &v1.CairnNode{}
		assert.NoError(c, k8s.Get(bg, clientKey(node), n))
		assert.False(c, meta.IsStatusConditionTrue(n.Status.Conditions, v1.ConditionReady))
	})
	for range 3 {
		w.waitPasses(t, 1) // I/O goes on
		require.Equal(t, engines, dev.Procs("cairn engine", "--volume "+vol+" "), "a second engine started")
	}

	require.NoError(t, network.HealHost(node))
	cut = false
	heal := waitFor(t, "the status did not converge", func(c *assert.CollectT) {
		n := &v1.CairnNode{}
		assert.NoError(c, k8s.Get(bg, clientKey(node), n))
		assert.True(c, meta.IsStatusConditionTrue(n.Status.Conditions, v1.ConditionReady))
		v := vols.Get(c, vol)
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
		assert.Equal(c, node, v.Status.AttachedNode)
	})
	vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	require.Equal(t, engines, dev.Procs("cairn engine", "--volume "+vol+" "), "the engine was replaced")
	w.waitPasses(t, 1)
	w.finish(t)
	record(t, figures{detect: detect, heal: heal})
}
