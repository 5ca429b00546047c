//go:build faults

package faults

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestNodeIsolated cuts a replica's node off from everyone (engine, other
// nodes, API server): after the replenish wait a replacement is rebuilt on
// the spare node; when the old node returns its stale replica is never
// chosen again and its data is removed.
func TestNodeIsolated(t *testing.T) {
	const vol = "fault-isolated"
	newVolume(t, vol, "256Mi", 3, 5*time.Second)
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 3)
	blk := vols.Attach(t, vol, "dev-node-1", 3)
	victim, node := replicaOn(t, vols.Get(t, vol), "dev-node-1")
	staleDir := filepath.Join(dev.DataDir, "nodes", node, "replicas", victim)
	_, err := os.Stat(staleDir)
	require.NoError(t, err)

	w := startWriter(t, blk, 4, 16<<20)
	w.waitPasses(t, 1)
	require.NoError(t, network.Cut(node))
	cut := true
	defer func() {
		if cut {
			_ = network.Heal(node)
		}
	}()
	detect := waitFor(t, "the engine did not drop the isolated replica", func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.Contains(c, v.Status.Replicas, v1.VolumeReplicaStatus{Name: victim, Node: node, Mode: "ERR"})
	})
	rebuilt := waitFor(t, "no replacement was rebuilt", func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
		assert.Len(c, v.Status.Replicas, 3)
		assert.NotContains(c, replicaNames(v), victim)
	})
	w.waitPasses(t, 1)

	require.NoError(t, network.Heal(node))
	cut = false
	cleaned := waitFor(t, "the stale replica's data was not removed", func(c *assert.CollectT) {
		_, err := os.Stat(staleDir)
		assert.True(c, os.IsNotExist(err), "%s still exists", staleDir)
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, clientKey(victim), &v1.Replica{})), "Replica %s still exists", victim)
		assert.Empty(c, dev.Procs("--replica "+victim), "the stale replica still runs")
	})
	v := vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	require.NotContains(t, replicaNames(v), victim, "the stale replica was chosen again")
	w.waitPasses(t, 1)
	w.finish(t)
	bytes, ok := resynced(t, vol)
	t.Logf("replacement healthy %v after the cut; stale data removed %v after the heal", (detect + rebuilt).Round(time.Millisecond), cleaned.Round(time.Millisecond))
	record(t, figures{detect: detect, heal: rebuilt, bytesResynced: bytes, resyncReported: ok})
}

// TestAgentKilledDuringRebuild SIGKILLs the node agent of a replica being
// rebuilt, mid-rebuild, and starts it again: the volume converges to
// healthy, fio verifies, and exactly one process runs per replica and
// engine.
func TestAgentKilledDuringRebuild(t *testing.T) {
	const vol = "fault-agent-rebuild"
	newVolume(t, vol, "512Mi", 2, 5*time.Second)
	// The engine runs beside one of the two replicas, so the third, the
	// one rebuilt, lands on another node: killing the engine's own agent
	// is TestAgentKilledOnEngineNode.
	engineNode := vols.WaitHealthy(t, vol, v1.VolumeDetached, 2).Status.Replicas[0].Node
	blk := vols.Attach(t, vol, engineNode, 2)
	w := startWriter(t, blk, 8, 32<<20)
	w.waitPasses(t, 2) // data to rebuild

	before := replicaNames(vols.Get(t, vol))
	setReplicas(t, vol, 3)
	// Kill the new replica's agent as soon as its process runs: the engine
	// is rebuilding it (or about to).
	var rebuilding, node string
	start := time.Now()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var list v1.ReplicaList
		assert.NoError(c, k8s.List(bg, &list, client.MatchingLabels{v1.LabelVolume: vol}))
		for _, r := range list.Items {
			if !slices.Contains(before, r.Name) && len(dev.Procs("cairn replica", "--replica "+r.Name+" ")) == 1 {
				rebuilding, node = r.Name, r.Spec.NodeID
			}
		}
		assert.NotEmpty(c, rebuilding, "no new replica running")
	}, wait, 20*time.Millisecond)
	for _, r := range vols.Get(t, vol).Status.Replicas {
		if r.Name == rebuilding {
			t.Logf("killing the agent of %s while its replica %s is %s", node, rebuilding, r.Mode)
		}
	}
	argv := killAgent(t, node)
	restartAgent(t, node, argv)
	heal := waitFor(t, "the volume did not converge", func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.Equal(c, v1.RobustnessHealthy, v.Status.Robustness)
		assert.Len(c, v.Status.Replicas, 3)
	})
	v := vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	requireOneProcessEach(t, v)
	w.waitPasses(t, 1)
	w.finish(t)
	require.NotEqual(t, engineNode, node)
	bytes, ok := resynced(t, vol)
	record(t, figures{detect: time.Since(start) - heal, heal: heal, bytesResynced: bytes, resyncReported: ok})
}

// TestAgentKilledOnEngineNode SIGKILLs the node agent of an attached
// volume's engine node while fio writes, and starts it again: I/O must go
// on (the engine is a process of its own) and the volume converge.
func TestAgentKilledOnEngineNode(t *testing.T) {
	const vol, node = "fault-agent-engine", "dev-node-1"
	newVolume(t, vol, "256Mi", 3, 5*time.Second)
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 3)
	blk := vols.Attach(t, vol, node, 3)
	w := startWriter(t, blk, 4, 16<<20)
	w.waitPasses(t, 1)
	argv := killAgent(t, node)
	restartAgent(t, node, argv)
	heal := waitFor(t, "the node did not come back", func(c *assert.CollectT) {
		n := &v1.CairnNode{}
		assert.NoError(c, k8s.Get(bg, clientKey(node), n))
		assert.True(c, meta.IsStatusConditionTrue(n.Status.Conditions, v1.ConditionReady))
	})
	w.waitPasses(t, 2)
	v := vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	requireOneProcessEach(t, v)
	w.finish(t)
	record(t, figures{heal: heal})
}

// TestAgentKilledDuringAttach SIGKILLs the agent of the node a volume is
// being attached to, right after the attach is asked for, and starts it
// again: the volume attaches there, its data verifies, one engine runs.
func TestAgentKilledDuringAttach(t *testing.T) {
	const vol, node = "fault-agent-attach", "dev-node-2"
	newVolume(t, vol, "256Mi", 3, 5*time.Second)
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 3)
	blk := vols.Attach(t, vol, "dev-node-1", 3)
	r := region{offset: 0, size: 32 << 20}
	require.NoError(t, fio(t.TempDir(), r.args(blk)))
	vols.Patch(t, vol, func(v *v1.Volume) { v.Spec.NodeID = "" })
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 3)

	vols.Patch(t, vol, func(v *v1.Volume) { v.Spec.NodeID = node })
	argv := killAgent(t, node)
	restartAgent(t, node, argv)
	heal := waitFor(t, "the volume did not attach", func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.Equal(c, v1.VolumeAttached, v.Status.State)
		assert.Equal(c, node, v.Status.AttachedNode)
	})
	v := vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	requireOneProcessEach(t, v)
	require.NoError(t, fio(t.TempDir(), append(r.args(v.Status.Endpoint), "--verify_only")))
	record(t, figures{heal: heal})
}

// requireOneProcessEach: exactly one process per replica and one engine.
func requireOneProcessEach(t *testing.T, v *v1.Volume) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, r := range v.Status.Replicas {
			assert.Len(c, dev.Procs("cairn replica", "--replica "+r.Name+" "), 1, "processes of replica %s", r.Name)
		}
		assert.Len(c, dev.Procs("cairn engine", "--volume "+v.Name+" "), 1, "engine processes")
	}, wait, tick)
}
