package node_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/node"
	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/replica"
)

// startAgentBinary runs `cairn node` from bin with extra environment, in
// its own process group, and stops it (SIGTERM) at the end of the test.
func startAgentBinary(t *testing.T, bin, name, dir string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "node", "--name", name, "--data-dir", dir, "--kubeconfig", kubeconfig)
	cmd.Env = append(os.Environ(), env...)
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(dir), name+"-agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	t.Cleanup(func() { logf.Close() })
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	})
	return cmd
}

// snapshotSource runs a one-replica volume on the suite's agent, writes
// data, snapshots it and overwrites the data after the snapshot. It
// returns what the snapshot holds at off.
func snapshotSource(t *testing.T, vol, snap string, off int64) []byte {
	t.Helper()
	ctx := context.Background()
	createToken(t, vol)
	createReplica(t, vol, vol+"-r1")
	addr := waitReplica(t, vol+"-r1", func(c *assert.CollectT, r *cairnv1.Replica) { assert.NotEmpty(c, r.Status.Address) }).Status.Address
	eng := &cairnv1.Engine{
		ObjectMeta: metav1.ObjectMeta{Name: vol, Labels: map[string]string{node.VolumeLabel: vol}},
		Spec: cairnv1.EngineSpec{VolumeName: vol, NodeID: nodeName, Frontend: "fuse", Replicas: []string{addr},
			Size: resource.MustParse("64Mi")},
	}
	require.NoError(t, k8s.Create(ctx, eng))
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), eng) })
	dev := waitEngine(t, vol, engineServing).Status.Endpoint
	data := pattern(4 << 20)
	directWrite(t, dev, data, off)
	s := &cairnv1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: snap}, Spec: cairnv1.SnapshotSpec{VolumeName: vol}}
	require.NoError(t, k8s.Create(ctx, s))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got := &cairnv1.Snapshot{}
		assert.NoError(c, k8s.Get(ctx, client.ObjectKey{Name: snap}, got))
		assert.True(c, got.Status.ReadyToUse)
	}, wait, tick)
	directWrite(t, dev, pattern(4<<20), off)
	return data
}

// TestCopyCrashRestarts: an agent killed in the middle of filling a
// replica from another volume's snapshot leaves no replica directory (only
// the scratch one); the next agent copies again from the start, and the
// replica then holds exactly the snapshot, with the restored generation.
func TestCopyCrashRestarts(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "losetup")
	t.Parallel()
	const src, snap, off = "vol-copysrc", "copysrc-snap", int64(3 << 20)
	want := snapshotSource(t, src, snap, off)

	fpBinary := filepath.Join(t.TempDir(), "cairn-failpoints")
	build := exec.Command("go", "build", "-tags", "failpoints", "-o", fpBinary, "./cmd/cairn")
	build.Dir = testutil.RepoRoot()
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	const name, rep = "n-copy", "vol-copydst-r1"
	dir := filepath.Join(t.TempDir(), name)
	agent := startAgentBinary(t, fpBinary, name, dir, "CAIRN_FAILPOINT_COPY=stall")
	r := &cairnv1.Replica{
		ObjectMeta: metav1.ObjectMeta{Name: rep, Labels: map[string]string{node.VolumeLabel: "vol-copydst"}},
		Spec: cairnv1.ReplicaSpec{VolumeName: "vol-copydst", NodeID: name, Size: resource.MustParse("64Mi"),
			CopyFrom: &cairnv1.SnapshotSource{Volume: src, Snapshot: snap}},
	}
	require.NoError(t, k8s.Create(context.Background(), r))
	waitReplica(t, rep, func(c *assert.CollectT, r *cairnv1.Replica) {
		assert.Equal(c, "Restoring", r.Status.State)
		assert.Positive(c, r.Status.RestoreProgress, "no chunk copied yet")
	})
	require.DirExists(t, filepath.Join(dir, "replicas", ".restore-"+rep))

	require.NoError(t, agent.Process.Kill())
	_ = agent.Wait()
	require.NoDirExists(t, filepath.Join(dir, "replicas", rep), "a half-filled replica in place")

	startAgentBinary(t, binary, name, dir)
	waitReplica(t, rep, func(c *assert.CollectT, r *cairnv1.Replica) {
		assert.Equal(c, src+"/"+snap, r.Status.CopiedSnapshot)
		assert.Equal(c, "Stopped", r.Status.State)
	})
	require.NoDirExists(t, filepath.Join(dir, "replicas", ".restore-"+rep))
	got, err := replica.Open(filepath.Join(dir, "replicas", rep))
	require.NoError(t, err)
	t.Cleanup(func() { got.Close() })
	buf := make([]byte, len(want))
	_, err = got.ReadAt(buf, off)
	require.NoError(t, err)
	require.Equal(t, want, buf, "the copy differs from the snapshot")
	head := make([]byte, off)
	_, err = got.ReadAt(head, 0)
	require.NoError(t, err)
	require.Equal(t, make([]byte, off), head, "bytes the snapshot never held")
	require.Equal(t, uint64(2), got.Generation())
}
