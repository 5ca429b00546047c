package e2e

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/testutil"
)

// TestReplicaMigration: changing a policy's nodeSelector moves an attached
// volume's replicas to the nodes it now admits through the real engine:
// the new replicas rebuild, the old ones go (their data removed from their
// nodes), and what was written reads back.
func TestReplicaMigration(t *testing.T) {
	t.Parallel()
	const vol = "e2e-migrate"
	p := tieredPolicy(t, "e2e-migrate", "migrate")
	vols.Create(t, vol, "migrate", "64Mi")
	onNodes(t, vol, "dev-node-1", "dev-node-2")
	dev := vols.Attach(t, vol, "dev-node-1", 2)
	region1.write(t, dev)
	oldDirs := replicaDirs(t, vol)

	patchPolicy(t, p.Name, func(p *v1.VolumePolicy) { p.Spec.Placement.NodeSelector[tierLabel] = "b" })
	onNodes(t, vol, "dev-node-3", "dev-node-4")
	vols.WaitHealthy(t, vol, v1.VolumeAttached, 2)
	region1.verify(t, dev)
	gone(t, oldDirs)
}

// TestReplicaMigrationDetached: a detached volume keeps its old replicas
// beside the empty new ones until it is attached; the engine then fills
// the new ones from the old (never the other way round), and the old ones go.
func TestReplicaMigrationDetached(t *testing.T) {
	t.Parallel()
	const vol = "e2e-migrate-idle"
	p := tieredPolicy(t, "e2e-migrate-idle", "migrate-idle")
	vols.Create(t, vol, "migrate-idle", "64Mi")
	onNodes(t, vol, "dev-node-1", "dev-node-2")
	region1.write(t, vols.Attach(t, vol, "dev-node-2", 2))
	vols.Detach(t, vol, 2)
	oldDirs := replicaDirs(t, vol)

	patchPolicy(t, p.Name, func(p *v1.VolumePolicy) { p.Spec.Placement.NodeSelector[tierLabel] = "b" })
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Len(c, testutil.ReplicaNodes(vols.Get(c, vol)), 4)
	}, wait, tick)
	vols.Patch(t, vol, func(v *v1.Volume) { v.Spec.NodeID = "dev-node-2" })
	onNodes(t, vol, "dev-node-3", "dev-node-4")
	v := vols.WaitHealthy(t, vol, v1.VolumeAttached, 2)
	region1.verify(t, v.Status.Endpoint)
	gone(t, oldDirs)
}

// tierLabel splits the dev nodes into tier a (nodes 1, 2) and b (3, 4).
const tierLabel = "e2e.cairn.dev/migrate-tier"

// tieredPolicy labels the dev nodes by tier and creates a 2-replica policy
// for app placed on tier a; it returns once the manager has the policy, so
// the volume created next is placed under it.
func tieredPolicy(t *testing.T, name, app string) *v1.VolumePolicy {
	t.Helper()
	tiers := map[string]string{"dev-node-1": "a", "dev-node-2": "a", "dev-node-3": "b", "dev-node-4": "b"}
	for node, tier := range tiers {
		testutil.Patch(t, k8s, &v1.CairnNode{ObjectMeta: metaName(node)}, func(n *v1.CairnNode) {
			if n.Labels == nil {
				n.Labels = map[string]string{}
			}
			n.Labels[tierLabel] = tier
		})
	}
	p := &v1.VolumePolicy{ObjectMeta: metaName(name)}
	p.Spec.Replicas = 2
	p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
	p.Spec.Placement = &v1.Placement{Spread: v1.SpreadNode, NodeSelector: map[string]string{tierLabel: "a"}}
	vols.CreatePolicy(t, p)
	return p
}

// gone waits until the directories are removed.
func gone(t *testing.T, dirs []string) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, dir := range dirs {
			_, err := os.Stat(dir)
			assert.True(c, os.IsNotExist(err), "old replica data %s still there", dir)
		}
	}, wait, tick)
}

// onNodes waits until the volume is healthy with one RW replica on each of
// nodes and no other.
func onNodes(t *testing.T, vol string, nodes ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, n := range nodes {
		want[n] = true
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.Equal(c, want, testutil.ReplicaNodes(v))
		assert.Len(c, v.Status.Replicas, len(nodes))
		for _, r := range v.Status.Replicas {
			assert.Equal(c, "RW", r.Mode, "replica %s", r.Name)
		}
	}, wait, tick)
}
