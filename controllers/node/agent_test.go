package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/node"
	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/replica"
	"github.com/cairnstore/cairn/replica/wire"
)

const (
	wait = 60 * time.Second
	tick = 100 * time.Millisecond
)

// TestNodeRegistersAndHeartbeats: the agent creates its CairnNode, reports
// its disk and zone, and renews its Lease.
func TestNodeRegistersAndHeartbeats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var first *metav1.MicroTime
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var n cairnv1.CairnNode
		if !assert.NoError(c, k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &n)) {
			return
		}
		assert.Equal(c, "zone-a", n.Status.Zone)
		assert.True(c, apimeta.IsStatusConditionTrue(n.Status.Conditions, "Ready"))
		if assert.Len(c, n.Status.Disks, 1) {
			d := n.Status.Disks[0]
			assert.Equal(c, dataDir, d.Path)
			assert.Positive(c, d.Capacity.Value())
			assert.Positive(c, d.Available.Value())
		}
		var l coordinationv1.Lease
		if !assert.NoError(c, k8s.Get(ctx, client.ObjectKey{Namespace: node.SystemNamespace, Name: "cairn-node-" + nodeName}, &l)) {
			return
		}
		assert.Equal(c, nodeName, *l.Spec.HolderIdentity)
		assert.EqualValues(c, 20, *l.Spec.LeaseDurationSeconds)
		if first == nil {
			first = l.Spec.RenewTime
		}
		assert.True(c, l.Spec.RenewTime.After(first.Time), "lease renewed")
	}, wait, tick)
}

// TestReplicaAndEngineLifecycle walks a volume through the agent: replicas
// get addresses while detached, run once an Engine exists, are restarted
// at the same address after SIGKILL; the engine exposes a loop device that
// stores data; deleting the Engine leaves no loop device, mount or process;
// deleting a Replica deletes its data.
func TestReplicaAndEngineLifecycle(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "losetup")
	t.Parallel()
	ctx := context.Background()
	const vol = "vol-life"
	token := createToken(t, vol)
	reps := []string{vol + "-r1", vol + "-r2"}
	for _, r := range reps {
		createReplica(t, vol, r)
	}

	// Detached: addresses are chosen, no process runs.
	addrs := make([]string, len(reps))
	for i, r := range reps {
		rep := waitReplica(t, r, func(c *assert.CollectT, rep *cairnv1.Replica) {
			assert.Equal(c, "Stopped", rep.Status.State)
			assert.NotEmpty(c, rep.Status.Address)
			assert.Contains(c, rep.Finalizers, node.ReplicaFinalizer)
			assertReady(c, rep.Status.Conditions, rep.Generation, rep.Status.ObservedGeneration)
		})
		addrs[i] = rep.Status.Address
	}

	// Attach: the replicas run, named in argv, without the token.
	eng := &cairnv1.Engine{
		ObjectMeta: metav1.ObjectMeta{Name: vol, Labels: map[string]string{node.VolumeLabel: vol}},
		Spec: cairnv1.EngineSpec{VolumeName: vol, NodeID: nodeName, Frontend: "fuse", Replicas: addrs,
			Size: resource.MustParse("64Mi")},
	}
	require.NoError(t, k8s.Create(ctx, eng))
	pids := map[string]int32{}
	for i, r := range reps {
		rep := waitRunningReplica(t, r, addrs[i])
		pids[r] = rep.Status.PID
		cmd := cmdline(t, int(rep.Status.PID))
		require.Contains(t, cmd, "--volume\x00"+vol+"\x00")
		require.Contains(t, cmd, "--replica\x00"+r+"\x00")
		require.NotContains(t, cmd, token)
		require.NotContains(t, environ(t, int(rep.Status.PID)), token)
		requireTLSOnly(t, addrs[i], token)
	}
	tokenFile := filepath.Join(dataDir, "run", vol+".token")
	st, err := os.Stat(tokenFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	// The engine exposes a loop device that stores data.
	e := waitEngine(t, vol, func(c *assert.CollectT, e *cairnv1.Engine) {
		assert.Equal(c, "Running", e.Status.State)
		assert.True(c, strings.HasPrefix(e.Status.Endpoint, "/dev/loop"), "endpoint %q", e.Status.Endpoint)
		assertReady(c, e.Status.Conditions, e.Generation, e.Status.ObservedGeneration)
		assert.Equal(c, "healthy", e.Status.Robustness)
		for _, a := range addrs {
			assert.Equal(c, "healthy", e.Status.ReplicaModes[a])
		}
	})
	require.NotContains(t, cmdline(t, int(e.Status.PID)), token)
	assertCurrent(t, e)
	for _, r := range reps {
		var rep cairnv1.Replica
		require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: r}, &rep))
		assertCurrent(t, &rep)
	}
	var cn cairnv1.CairnNode
	require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &cn))
	assertCurrent(t, &cn)
	data := pattern(1 << 20)
	directWrite(t, e.Status.Endpoint, data, 4<<20)
	require.Equal(t, data, directRead(t, e.Status.Endpoint, len(data), 4<<20))

	// SIGKILL one replica: restarted with the same address, Ready again,
	// and the engine rebuilds it.
	require.NoError(t, syscall.Kill(int(pids[reps[0]]), syscall.SIGKILL))
	rep := waitReplica(t, reps[0], func(c *assert.CollectT, rep *cairnv1.Replica) {
		assert.Equal(c, "Running", rep.Status.State)
		assert.NotEqual(c, pids[reps[0]], rep.Status.PID)
		assert.Positive(c, rep.Status.Restarts)
		assertReady(c, rep.Status.Conditions, rep.Generation, rep.Status.ObservedGeneration)
	})
	require.Equal(t, addrs[0], rep.Status.Address)
	waitEngine(t, vol, func(c *assert.CollectT, e *cairnv1.Engine) {
		assert.Equal(c, "healthy", e.Status.ReplicaModes[addrs[0]])
	})
	require.Equal(t, data, directRead(t, e.Status.Endpoint, len(data), 4<<20))

	// SIGKILL the engine: restarted, exposed again, data intact, and the
	// dead FUSE mount's loop device is gone.
	require.NoError(t, syscall.Kill(int(e.Status.PID), syscall.SIGKILL))
	e = waitEngine(t, vol, func(c *assert.CollectT, ne *cairnv1.Engine) {
		assert.Equal(c, "Running", ne.Status.State)
		assert.NotEqual(c, e.Status.PID, ne.Status.PID)
		assert.Positive(c, ne.Status.Restarts)
		assert.True(c, strings.HasPrefix(ne.Status.Endpoint, "/dev/loop"), "endpoint %q", ne.Status.Endpoint)
		assertReady(c, ne.Status.Conditions, ne.Generation, ne.Status.ObservedGeneration)
	})
	require.Equal(t, 1, strings.Count(losetupAll(t), filepath.Join(dataDir, "mnt", vol)+"/"), "one loop device for the volume")
	require.Equal(t, data, directRead(t, e.Status.Endpoint, len(data), 4<<20))

	// Detach: no loop device, no mount, no engine; replicas stop, data stays.
	require.NoError(t, k8s.Delete(ctx, eng))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(eng), &cairnv1.Engine{})
		assert.True(c, apierrors.IsNotFound(err), "engine gone: %v", err)
	}, wait, tick)
	require.NotContains(t, losetupAll(t), filepath.Join(dataDir, "mnt", vol))
	require.NotContains(t, readFile(t, "/proc/mounts"), filepath.Join(dataDir, "mnt", vol))
	require.False(t, processAlive(int(e.Status.PID)), "engine process left running")
	for _, r := range reps {
		rep := waitReplica(t, r, func(c *assert.CollectT, rep *cairnv1.Replica) {
			assert.Equal(c, "Stopped", rep.Status.State)
			assert.Zero(c, rep.Status.PID)
		})
		require.DirExists(t, filepath.Join(dataDir, "replicas", r))
		_ = rep
	}
	for _, pid := range pids {
		require.False(t, processAlive(int(pid)), "replica process %d left running", pid)
	}

	// Delete a replica: its data and finalizer go.
	require.NoError(t, k8s.Delete(ctx, &cairnv1.Replica{ObjectMeta: metav1.ObjectMeta{Name: reps[1]}}))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		err := k8s.Get(ctx, client.ObjectKey{Name: reps[1]}, &cairnv1.Replica{})
		assert.True(c, apierrors.IsNotFound(err), "replica gone: %v", err)
	}, wait, tick)
	require.NoDirExists(t, filepath.Join(dataDir, "replicas", reps[1]))
}

// TestEngineFollowsSpecReplicas: adding an address to spec.replicas adds
// (and rebuilds) that replica in the running engine; removing one removes it.
func TestEngineFollowsSpecReplicas(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "losetup")
	t.Parallel()
	ctx := context.Background()
	const vol = "vol-members"
	createToken(t, vol)
	reps := []string{vol + "-r1", vol + "-r2", vol + "-r3"}
	var addrs []string
	for _, r := range reps {
		createReplica(t, vol, r)
		addrs = append(addrs, waitReplica(t, r, func(c *assert.CollectT, rep *cairnv1.Replica) {
			assert.NotEmpty(c, rep.Status.Address)
		}).Status.Address)
	}
	eng := &cairnv1.Engine{
		ObjectMeta: metav1.ObjectMeta{Name: vol},
		Spec: cairnv1.EngineSpec{VolumeName: vol, NodeID: nodeName, Replicas: addrs[:2],
			Size: resource.MustParse("64Mi")},
	}
	require.NoError(t, k8s.Create(ctx, eng))
	e := waitEngine(t, vol, func(c *assert.CollectT, e *cairnv1.Engine) {
		assert.Equal(c, "Running", e.Status.State)
		assert.Len(c, e.Status.ReplicaModes, 2)
	})
	data := pattern(1 << 20)
	directWrite(t, e.Status.Endpoint, data, 0)

	patch := client.MergeFrom(e.DeepCopy())
	e.Spec.Replicas = []string{addrs[1], addrs[2]}
	require.NoError(t, k8s.Patch(ctx, e, patch))
	waitEngine(t, vol, func(c *assert.CollectT, e *cairnv1.Engine) {
		assert.Equal(c, map[string]string{addrs[1]: "healthy", addrs[2]: "healthy"}, e.Status.ReplicaModes)
		assertReady(c, e.Status.Conditions, e.Generation, e.Status.ObservedGeneration)
	})
	require.Equal(t, data, directRead(t, e.Status.Endpoint, len(data), 0))
	require.NoError(t, k8s.Delete(ctx, e))
	for _, r := range reps {
		require.NoError(t, k8s.Delete(ctx, &cairnv1.Replica{ObjectMeta: metav1.ObjectMeta{Name: r}}))
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, r := range reps {
			assert.True(c, apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Name: r}, &cairnv1.Replica{})))
		}
	}, wait, tick)
}

// TestInvalidSpecStalls: what the schema lets through but the node cannot
// do is reported as Stalled, not retried hot.
func TestInvalidSpecStalls(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rep := &cairnv1.Replica{
		ObjectMeta: metav1.ObjectMeta{Name: "vol-bad-r1"},
		Spec: cairnv1.ReplicaSpec{VolumeName: "vol-bad", NodeID: nodeName, DiskPath: "/elsewhere",
			Size: resource.MustParse("64Mi")},
	}
	require.NoError(t, k8s.Create(ctx, rep))
	waitReplica(t, rep.Name, func(c *assert.CollectT, r *cairnv1.Replica) {
		if st := apimeta.FindStatusCondition(r.Status.Conditions, "Stalled"); assert.NotNil(c, st) {
			assert.Contains(c, st.Message, "/elsewhere")
		}
		assert.Equal(c, r.Generation, r.Status.ObservedGeneration)
	})
	eng := &cairnv1.Engine{
		ObjectMeta: metav1.ObjectMeta{Name: "vol-bad"},
		Spec: cairnv1.EngineSpec{VolumeName: "vol-bad", NodeID: nodeName, Replicas: []string{"127.0.0.1:1"},
			Size: resource.MustParse("1000")},
	}
	require.NoError(t, k8s.Create(ctx, eng))
	waitEngine(t, eng.Name, func(c *assert.CollectT, e *cairnv1.Engine) {
		assert.True(c, apimeta.IsStatusConditionTrue(e.Status.Conditions, "Stalled"))
		assert.False(c, apimeta.IsStatusConditionTrue(e.Status.Conditions, "Ready"))
	})
	require.NoError(t, k8s.Delete(ctx, eng))
	require.NoError(t, k8s.Delete(ctx, rep))
}

// requireTLSOnly checks that the replica at addr serves TLS keyed by
// token: a TLS client with the token gets in, a plaintext one is refused.
func requireTLSOnly(t *testing.T, addr, token string) {
	t.Helper()
	ctx := context.Background()
	c, err := replica.Dial(ctx, addr, token)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	cred, err := wire.NewCredentials(token)
	require.NoError(t, err)
	raw, err := netx.Dial(ctx, addr)
	require.NoError(t, err)
	defer raw.Close()
	_, err = wire.ClientHandshake(ctx, raw, cred, false)
	require.ErrorIs(t, err, wire.ErrAuth)
	require.ErrorContains(t, err, "requires TLS")
}

func createToken(t *testing.T, vol string) string {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	tok := hex.EncodeToString(b)
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: node.SystemNamespace, Name: cairnv1.TokenSecretName(vol),
			Labels: map[string]string{node.VolumeLabel: vol}},
		Data: map[string][]byte{node.TokenKey: []byte(tok)},
	}
	require.NoError(t, k8s.Create(context.Background(), s))
	return tok
}

func createReplica(t *testing.T, vol, name string) {
	t.Helper()
	r := &cairnv1.Replica{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{node.VolumeLabel: vol}},
		Spec:       cairnv1.ReplicaSpec{VolumeName: vol, NodeID: nodeName, Size: resource.MustParse("64Mi")},
	}
	require.NoError(t, k8s.Create(context.Background(), r))
}

func waitReplica(t *testing.T, name string, check func(*assert.CollectT, *cairnv1.Replica)) *cairnv1.Replica {
	t.Helper()
	var rep cairnv1.Replica
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		if assert.NoError(c, k8s.Get(context.Background(), client.ObjectKey{Name: name}, &rep)) {
			check(c, &rep)
		}
	}, wait, tick)
	return &rep
}

func waitRunningReplica(t *testing.T, name, addr string) *cairnv1.Replica {
	t.Helper()
	return waitReplica(t, name, func(c *assert.CollectT, rep *cairnv1.Replica) {
		assert.Equal(c, "Running", rep.Status.State)
		assert.Equal(c, addr, rep.Status.Address)
		assert.Positive(c, rep.Status.PID)
		assertReady(c, rep.Status.Conditions, rep.Generation, rep.Status.ObservedGeneration)
	})
}

func waitEngine(t *testing.T, name string, check func(*assert.CollectT, *cairnv1.Engine)) *cairnv1.Engine {
	t.Helper()
	var e cairnv1.Engine
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		if assert.NoError(c, k8s.Get(context.Background(), client.ObjectKey{Name: name}, &e)) {
			check(c, &e)
		}
	}, wait, tick)
	return &e
}

// assertCurrent checks that kstatus, as Flux and Argo CD use it, computes
// Current for obj.
func assertCurrent(t *testing.T, obj client.Object) {
	t.Helper()
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	require.NoError(t, err)
	res, err := kstatus.Compute(&unstructured.Unstructured{Object: u})
	require.NoError(t, err)
	require.Equal(t, kstatus.CurrentStatus, res.Status, "%s: %s", obj.GetName(), res.Message)
}

// assertReady checks kstatus Current: Ready=True, no Reconciling/Stalled,
// observedGeneration caught up.
func assertReady(c *assert.CollectT, conds []metav1.Condition, gen, observed int64) {
	assert.True(c, apimeta.IsStatusConditionTrue(conds, "Ready"), "Ready: %+v", conds)
	assert.Nil(c, apimeta.FindStatusCondition(conds, "Reconciling"))
	assert.Nil(c, apimeta.FindStatusCondition(conds, "Stalled"))
	assert.Equal(c, gen, observed)
}

func cmdline(t *testing.T, pid int) string {
	t.Helper()
	return readFile(t, fmt.Sprintf("/proc/%d/cmdline", pid))
}

func environ(t *testing.T, pid int) string {
	t.Helper()
	return readFile(t, fmt.Sprintf("/proc/%d/environ", pid))
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

func losetupAll(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("losetup", "-a").CombinedOutput()
	require.NoError(t, err, string(out))
	return string(out)
}

// processAlive reports whether pid runs (zombies count as gone).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func pattern(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// alignedBuf returns n bytes of page-aligned memory (for O_DIRECT).
func alignedBuf(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	t.Cleanup(func() { _ = unix.Munmap(b) })
	return b
}

func directWrite(t *testing.T, dev string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	buf := alignedBuf(t, len(data))
	copy(buf, data)
	_, err = f.WriteAt(buf, off)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
}

func directRead(t *testing.T, dev string, n int, off int64) []byte {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	buf := alignedBuf(t, n)
	_, err = f.ReadAt(buf, off)
	require.NoError(t, err)
	return append([]byte(nil), buf...)
}
