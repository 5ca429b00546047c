package main

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/testutil"
)

// TestNodeDrain drains a node of the real dev cluster. It moves replicas,
// so it is not parallel: it runs after TestApplyAndStatus left demo-data
// (three replicas, one on each node) and before the parallel tests, and
// leaves every node as it found it. An attached 2-replica volume moves its
// replica off the node; demo-data cannot (no fourth node), and the command
// says so and why.
func TestNodeDrain(t *testing.T) {
	vols := testutil.Volumes{Client: k8s, Wait: waitFor, Tick: tick}
	p := &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: "drain"}}
	p.Spec.Replicas = 2
	p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "drain"}}
	vols.CreatePolicy(t, p)
	vols.Create(t, "drain-vol", "drain", "64Mi")
	v := vols.WaitHealthy(t, "drain-vol", v1.VolumeDetached, 2)
	engineNode, drained := v.Status.Replicas[0].Node, v.Status.Replicas[1].Node
	vols.Attach(t, "drain-vol", engineNode, 2)

	r := ctl(t, "node", "drain", drained, "--wait")
	requireUserError(t, r, "node "+drained+": 1 replicas cannot move: demo-data: ")
	require.Contains(t, r.stdout, "node "+drained+": eviction requested")
	require.Contains(t, r.stdout, "node "+drained+": 1 replicas left (0 moving)")
	v = vols.WaitHealthy(t, "drain-vol", v1.VolumeAttached, 2)
	require.False(t, testutil.ReplicaNodes(v)[drained], "drain-vol still has a replica on %s", drained)
	require.Equal(t, nodeRow{Name: drained, Ready: "True", Scheduling: "evicting", Replicas: 1}, listNode(t, drained))

	r = ctl(t, "node", "undrain", drained)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "node "+drained+": eviction cleared\n", r.stdout)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		d := vols.Get(c, "demo-data")
		assert.Len(c, testutil.ReplicaNodes(d), 3)
		assert.Nil(c, meta.FindStatusCondition(d.Status.Conditions, "ReplicaScheduling"))
		assert.Nil(c, meta.FindStatusCondition(d.Status.Conditions, "ReplicasMoving"))
	}, waitFor, tick)
	require.Equal(t, "on", listNode(t, drained).Scheduling)
	vols.Detach(t, "drain-vol", 2)
	require.NoError(t, k8s.Delete(bg, &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "drain-vol"}}))
}

// listNode is the node's row of `cairnctl node list -o json` (zone aside).
func listNode(t *testing.T, name string) nodeRow {
	t.Helper()
	r := ctl(t, "node", "list", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	var rows []nodeRow
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rows))
	for _, row := range rows {
		if row.Name == name {
			row.Zone = ""
			return row
		}
	}
	require.Failf(t, "no row", "node %s not in %s", name, r.stdout)
	return nodeRow{}
}
