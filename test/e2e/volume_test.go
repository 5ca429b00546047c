package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/testutil"
)

var (
	region1 = fioJob{offset: "0", size: "16m"}
	region2 = fioJob{offset: "96m", size: "16m"}
)

// TestVolumeLifecycle: a policy's volume runs on three nodes; fio verifies
// through attach, a killed replica process, a move to another node,
// scaling down and up; deleting the policy deletes nothing, deleting the
// volume deletes every replica's data and process; the token is never in
// argv, environment or logs.
func TestVolumeLifecycle(t *testing.T) {
	const vol = "e2e-a"
	createPolicy(t, "e2e-gold", "lifecycle", 3)
	vols.Create(t, vol, "lifecycle", "1Gi")
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 3)
	noProcesses(t, vol)

	dev := vols.Attach(t, vol, "dev-node-1", 3)
	region1.write(t, dev)

	// SIGKILL one replica process while fio writes: the volume degrades,
	// the agent restarts it, the engine catches it up, fio stays clean.
	v := vols.Get(t, vol)
	victim := v.Status.Replicas[1].Name
	pids := suite.Procs("cairn replica", "--replica "+victim)
	require.Len(t, pids, 1, "replica process of %s", victim)
	done := make(chan struct{})
	go func() {
		defer close(done)
		region2.write(t, dev)
	}()
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	<-done
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		rep := &v1.Replica{}
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: victim}, rep))
		assert.Positive(c, rep.Status.Restarts, "the agent did not restart the replica")
	}, wait, tick)
	vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	region1.verify(t, dev)
	region2.verify(t, dev)

	// Move to another node: the data follows.
	vols.Detach(t, vol, 3)
	noProcesses(t, vol)
	dev = vols.Attach(t, vol, "dev-node-3", 3)
	region1.verify(t, dev)
	region2.verify(t, dev)

	// 3 -> 2 -> 3 replicas, verified after each.
	patchPolicy(t, "e2e-gold", func(p *v1.VolumePolicy) { p.Spec.Replicas = 2 })
	vols.WaitHealthy(t, vol, v1.VolumeAttached, 2)
	region1.verify(t, dev)
	patchPolicy(t, "e2e-gold", func(p *v1.VolumePolicy) { p.Spec.Replicas = 3 })
	vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	region1.verify(t, dev)
	region2.verify(t, dev)

	// Online growth while attached: the device grows, old data verifies,
	// the new range takes writes.
	vols.Patch(t, vol, func(v *v1.Volume) { v.Spec.Size = resource.MustParse("2Gi") })
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, "2147483648", deviceSize(c, dev))
	}, wait, tick)
	vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	fioJob{offset: "1500m", size: "16m"}.write(t, dev)
	region1.verify(t, dev)
	region2.verify(t, dev)

	requireTokenHidden(t, vol)

	// Deleting the policy deletes nothing.
	before := vols.Get(t, vol).Status.Replicas
	require.NoError(t, k8s.Delete(bg, &v1.VolumePolicy{ObjectMeta: metaName("e2e-gold")}))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.True(c, meta.IsStatusConditionTrue(v.Status.Conditions, "PolicyDeleted"))
		assert.True(c, meta.IsStatusConditionTrue(v.Status.Conditions, v1.ConditionReady))
		assert.ElementsMatch(c, before, v.Status.Replicas)
	}, wait, tick)
	region1.verify(t, dev)

	// Deleting the volume removes every replica's data and process.
	dirs := replicaDirs(t, vol)
	require.Len(t, dirs, 3)
	require.NoError(t, k8s.Delete(bg, &v1.Volume{ObjectMeta: metaName(vol)}))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, client.ObjectKey{Name: vol}, &v1.Volume{})))
		assert.Empty(c, suite.Procs("--volume "+vol))
		for _, d := range dirs {
			_, err := os.Stat(d)
			assert.True(c, os.IsNotExist(err), "%s still exists", d)
		}
	}, wait, tick)
}

// replicaDirs finds the volume's replica directories on every node.
func replicaDirs(t *testing.T, vol string) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(dataDir, "nodes", "*", "replicas", vol+"-r-*"))
	require.NoError(t, err)
	return dirs
}

// requireTokenHidden: the volume token is in no process's argv or
// environment and in no log.
func requireTokenHidden(t *testing.T, vol string) {
	t.Helper()
	sec := &corev1.Secret{}
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Namespace: v1.SystemNamespace, Name: v1.TokenSecretName(vol)}, sec))
	token := string(sec.Data[v1.TokenKey])
	require.Len(t, token, 64)
	requireHidden(t, token, "the token of "+vol, allProcs())
}

// requireHidden checks that value appears in none of the processes' argv
// or environment, no log of the cluster, node agents or children, no event
// and no status of a Cairn object.
func requireHidden(t *testing.T, value, what string, pids []int) {
	t.Helper()
	for _, pid := range pids {
		for _, f := range []string{"cmdline", "environ"} {
			b, _ := os.ReadFile(filepath.Join("/proc", itoa(pid), f))
			require.NotContains(t, string(b), value, "pid %d %s holds %s", pid, f, what)
		}
	}
	logs, err := filepath.Glob(filepath.Join(dataDir, "nodes", "*", "log", "*.log"))
	require.NoError(t, err)
	logs = append(logs, devOut.Name(), filepath.Join(dataDir, "controlplane.log"))
	more, _ := filepath.Glob(filepath.Join(dataDir, "nodes", "*", "node.log"))
	for _, l := range append(logs, more...) {
		b, err := os.ReadFile(l)
		require.NoError(t, err)
		require.False(t, strings.Contains(string(b), value), "%s holds %s", l, what)
	}
	for _, list := range []client.ObjectList{&corev1.EventList{}, &eventsv1.EventList{}, &v1.BackupTargetList{}, &v1.BackupList{}, &v1.VolumeList{}, &v1.ReplicaList{}, &v1.EngineList{}} {
		require.NoError(t, k8s.List(bg, list))
		b, err := json.Marshal(list)
		require.NoError(t, err)
		require.NotContains(t, string(b), value, "%T holds %s", list, what)
	}
}

// TestNodeLossReplenish: a node agent dies with its replica processes; the
// node goes not Ready, and after the replenish wait a replacement replica
// is built on the spare node; the data verifies.
func TestNodeLossReplenish(t *testing.T) {
	const vol = "e2e-b"
	createPolicy(t, "e2e-silver", "nodeloss", 3)
	vols.Create(t, vol, "nodeloss", "256Mi")
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 3)
	v := vols.Get(t, vol)
	attachTo := v.Status.Replicas[0].Node
	lost, lostReplica := v.Status.Replicas[1].Node, v.Status.Replicas[1].Name
	dev := vols.Attach(t, vol, attachTo, 3)
	region1.write(t, dev)

	lostNode := &v1.CairnNode{}
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Name: lost}, lostNode))
	zone := lostNode.Status.Zone
	agents := suite.Procs("node --name " + lost + " ")
	require.Len(t, agents, 1, "agent of %s", lost)
	kill := append(childrenOf(agents[0]), agents[0])
	for _, pid := range kill {
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n := &v1.CairnNode{}
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: lost}, n))
		assert.False(c, meta.IsStatusConditionTrue(n.Status.Conditions, v1.ConditionReady))
		v := vols.Get(c, vol)
		assert.False(c, testutil.ReplicaNodes(v)[lost], "a replica is still on %s", lost)
	}, wait, tick)
	v = vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	require.False(t, testutil.ReplicaNodes(v)[lost])
	region1.verify(t, dev)
	region2.write(t, dev)
	for _, r := range replicaObjects(t, vol) {
		require.NotEqual(t, lost, r.Spec.NodeID, "replica %s object still on the lost node", r.Name)
	}

	// The node returns: its stale replica is never used again and its
	// data is removed.
	staleDir := filepath.Join(dataDir, "nodes", lost, "replicas", lostReplica)
	require.DirExists(t, staleDir)
	restartAgent(t, lost, zone)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n := &v1.CairnNode{}
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: lost}, n))
		assert.True(c, meta.IsStatusConditionTrue(n.Status.Conditions, v1.ConditionReady))
		_, err := os.Stat(staleDir)
		assert.True(c, os.IsNotExist(err), "stale replica data still on %s", lost)
	}, wait, tick)
	v = vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	require.False(t, testutil.ReplicaNodes(v)[lost])
	region2.verify(t, dev)
}

// restartAgent starts the node agent of node again, as dev started it, and
// the suite stops it (SIGTERM, so it stops its children) at its end.
func restartAgent(t *testing.T, node, zone string) {
	t.Helper()
	dir := filepath.Join(dataDir, "nodes", node)
	logf, err := os.OpenFile(filepath.Join(dir, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	defer logf.Close()
	cmd := exec.Command(cairnBin, "node", "--name", node, "--data-dir", dir, "--zone", zone,
		"--kubeconfig", filepath.Join(dataDir, "kubeconfig"), "--csi-endpoint", "unix://"+filepath.Join(dir, "csi.sock"))
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	// The node stays in the cluster for the tests that run after this one;
	// the suite stops it at the end, as dev stops its own agents.
	suite.Started(cmd)
}

// noProcesses waits until no replica or engine process of the detached
// volume runs: the agents stop replicas once they see the engine gone,
// which is after the volume reports Detached.
func noProcesses(t *testing.T, vol string) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Empty(c, suite.Procs("--volume "+vol), "a detached volume runs processes")
	}, wait, tick)
}
