package node_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/node"
	"github.com/cairnstore/cairn/internal/testutil"
)

// startAgent runs `cairn node` as a process in its own process group.
func startAgent(t *testing.T, name, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(binary, "node", "--name", name, "--data-dir", dir, "--kubeconfig", kubeconfig)
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

// TestAgentRestart: a SIGKILLed `cairn node` leaves its children running;
// the next agent adopts them: the same replica and engine processes keep
// serving, the same loop device (a filesystem mounted on it stays usable)
// and the data are intact, and a killed adopted child is restarted as
// usual. SIGTERM of the agent stops every child.
func TestAgentRestart(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "losetup")
	t.Parallel()
	ctx := context.Background()
	const name, vol = "n2", "vol-restart"
	dir := filepath.Join(t.TempDir(), name)
	agent := startAgent(t, name, dir)

	token := createToken(t, vol)
	rep := &cairnv1.Replica{
		ObjectMeta: metav1.ObjectMeta{Name: vol + "-r1", Labels: map[string]string{node.VolumeLabel: vol}},
		Spec:       cairnv1.ReplicaSpec{VolumeName: vol, NodeID: name, Size: resource.MustParse("32Mi")},
	}
	require.NoError(t, k8s.Create(ctx, rep))
	addr := waitReplica(t, rep.Name, func(c *assert.CollectT, r *cairnv1.Replica) {
		assert.NotEmpty(c, r.Status.Address)
	}).Status.Address
	eng := &cairnv1.Engine{
		ObjectMeta: metav1.ObjectMeta{Name: vol, Labels: map[string]string{node.VolumeLabel: vol}},
		Spec:       cairnv1.EngineSpec{VolumeName: vol, NodeID: name, Replicas: []string{addr}, Size: resource.MustParse("32Mi")},
	}
	require.NoError(t, k8s.Create(ctx, eng))
	oldRep := waitRunningReplica(t, rep.Name, addr)
	require.NotContains(t, cmdline(t, int(oldRep.Status.PID)), token)
	oldEng := waitEngine(t, vol, engineServing)
	data := pattern(256 << 10)
	directWrite(t, oldEng.Status.Endpoint, data, 1<<20)

	// Kill the agent only: its children keep running.
	require.NoError(t, agent.Process.Kill())
	_ = agent.Wait()
	require.True(t, processAlive(int(oldRep.Status.PID)))
	require.True(t, processAlive(int(oldEng.Status.PID)))

	// A marker the next agent's status patch must overwrite.
	patch := client.MergeFrom(oldEng.DeepCopy())
	oldEng.Status.State = "Starting"
	require.NoError(t, k8s.Status().Patch(ctx, oldEng, patch))
	agent = startAgent(t, name, dir)
	waitReplica(t, rep.Name, func(c *assert.CollectT, r *cairnv1.Replica) {
		assert.Equal(c, "Running", r.Status.State)
		assert.Equal(c, addr, r.Status.Address)
		assert.Equal(c, oldRep.Status.PID, r.Status.PID, "replica process replaced")
	})
	newEng := waitEngine(t, vol, func(c *assert.CollectT, e *cairnv1.Engine) {
		engineServing(c, e)
		assert.Equal(c, oldEng.Status.PID, e.Status.PID, "engine process replaced")
	})
	require.Equal(t, oldEng.Status.Endpoint, newEng.Status.Endpoint, "the loop device changed")
	require.Equal(t, 1, strings.Count(losetupAll(t), filepath.Join(dir, "mnt")), "one loop device for the volume")
	require.Equal(t, data, directRead(t, newEng.Status.Endpoint, len(data), 1<<20))

	// An adopted engine that dies is restarted like any child.
	require.NoError(t, syscall.Kill(int(newEng.Status.PID), syscall.SIGKILL))
	newEng = waitEngine(t, vol, func(c *assert.CollectT, e *cairnv1.Engine) {
		engineServing(c, e)
		assert.NotEqual(c, oldEng.Status.PID, e.Status.PID)
		assert.Positive(c, e.Status.PID)
	})
	require.Equal(t, 1, strings.Count(losetupAll(t), filepath.Join(dir, "mnt")), "one loop device for the volume")
	require.Equal(t, data, directRead(t, newEng.Status.Endpoint, len(data), 1<<20))

	// SIGTERM: the agent stops its children and detaches the volume.
	require.NoError(t, agent.Process.Signal(syscall.SIGTERM))
	require.NoError(t, agent.Wait())
	newRep := &cairnv1.Replica{}
	require.NoError(t, k8s.Get(ctx, client.ObjectKeyFromObject(rep), newRep))
	require.False(t, processAlive(int(newEng.Status.PID)), "engine left running")
	require.False(t, processAlive(int(newRep.Status.PID)), "replica left running")
	require.NotContains(t, losetupAll(t), filepath.Join(dir, "mnt"))
	require.NotContains(t, readFile(t, "/proc/mounts"), filepath.Join(dir, "mnt"))

	// Clean up through a fresh agent: finalizers are released.
	agent = startAgent(t, name, dir)
	require.NoError(t, k8s.Delete(ctx, eng))
	require.NoError(t, k8s.Delete(ctx, rep))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(eng), &cairnv1.Engine{})))
		assert.True(c, apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(rep), &cairnv1.Replica{})))
	}, wait, tick)
	require.NoDirExists(t, filepath.Join(dir, "replicas", rep.Name))
	require.NoFileExists(t, filepath.Join(dir, "run", vol+".token"))

	// The token is in no log: the agent's and its children's.
	logs, _ := filepath.Glob(filepath.Join(dir, "log", "*.log"))
	logs = append(logs, filepath.Join(filepath.Dir(dir), name+"-agent.log"))
	require.GreaterOrEqual(t, len(logs), 3)
	for _, l := range logs {
		require.NotContains(t, readFile(t, l), token, l)
	}
}

func engineServing(c *assert.CollectT, e *cairnv1.Engine) {
	assert.Equal(c, "Running", e.Status.State)
	assert.True(c, strings.HasPrefix(e.Status.Endpoint, "/dev/loop"), "endpoint %q", e.Status.Endpoint)
	assert.Equal(c, "healthy", e.Status.Robustness)
}
