package faults

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestPartitionEngineReplica cuts the link of one replica's node (not the
// engine's): the engine drops that replica and I/O goes on; after the heal
// the same replica catches up (no replacement: the replenish wait is
// longer than the test).
func TestPartitionEngineReplica(t *testing.T) {
	const vol = "fault-partition"
	newVolume(t, vol, "256Mi", 3, time.Hour)
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 3)
	blk := vols.Attach(t, vol, "dev-node-1", 3)
	victim, node := replicaOn(t, vols.Get(t, vol), "dev-node-1")

	w := startWriter(t, blk, 4, 16<<20)
	w.waitPasses(t, 1)
	require.NoError(t, network.Cut(node))
	cut := true
	defer func() {
		if cut {
			_ = network.Heal(node)
		}
	}()
	detect := waitReplica(t, "the engine did not drop the cut replica", vol, victim, node, v1.RobustnessDegraded, "ERR")
	w.waitPasses(t, 2) // I/O goes on without it

	require.NoError(t, network.Heal(node))
	cut = false
	heal := waitReplica(t, "the replica did not catch up", vol, victim, node, v1.RobustnessHealthy, "RW")
	vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	w.waitPasses(t, 1)
	w.finish(t)
	bytes, ok := resynced(t, vol)
	record(t, figures{detect: detect, heal: heal, bytesResynced: bytes, resyncReported: ok})
}
