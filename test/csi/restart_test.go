package csi

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairnstore/cairn/internal/testutil"
)

// restartNode is the node whose agent TestStageAfterAgentRestart restarts
// (not the sanity node, whose node service other tests drive).
const restartNode = "dev-node-2"

// agentArgv finds the running `cairn node` of the node in this suite's
// cairn dev and returns its pid and argv.
func agentArgv(t *testing.T, name string) (int, []string) {
	t.Helper()
	pids := suite.Procs("node --name " + name + " ")
	require.Len(t, pids, 1, "node agent %s", name)
	argv, err := testutil.Cmdline(pids[0])
	require.NoError(t, err)
	return pids[0], argv
}

// restartAgent SIGKILLs the node's agent (its children keep running) and
// starts it again with the same command line, logging to the same file.
func restartAgent(t *testing.T, name string) {
	t.Helper()
	pid, argv := agentArgv(t, name)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return testutil.Zombie(pid) }, time.Minute, 100*time.Millisecond, "agent %d still running", pid)
	logf, err := os.OpenFile(filepath.Join(tmp, "dev", "nodes", name, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	suite.Started(cmd)
}

// mountSource is the device mounted at path ("" when none).
func mountSource(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	src := ""
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if f, g := strings.Fields(pre), strings.Fields(post); ok && len(f) >= 5 && f[4] == path && len(g) >= 2 {
			src = g[1]
		}
	}
	return src
}

// TestStageAfterAgentRestart: a volume staged and published through a
// node's agent stays usable when that agent is killed and started again
// (it adopts the running engine and its loop device); a repeated
// NodeStage then finds the existing mount, ControllerPublish names the
// same device, and the mounted filesystem still reads and writes.
//
// Not parallel: killing an agent orphans its children's process groups,
// and the kernel sends SIGHUP to such a group with a stopped member (a
// replica another test stopped with SIGSTOP would die).
func TestStageAfterAgentRestart(t *testing.T) {
	id := newVolume(t, createReq("restart-vol", 64<<20))
	ctx := ctxT(t)
	pubReq := &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: restartNode, VolumeCapability: mountCap}
	pub, err := controller.ControllerPublishVolume(ctx, pubReq)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = controller.ControllerUnpublishVolume(context.Background(), &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: restartNode})
	})
	conn, err := grpc.NewClient("unix://"+strings.Replace(nodeSock, sanityNode, restartNode, 1), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	// Closed after the cleanups below (they run last-registered first):
	// a deferred Close ran before them, so unpublish and unstage failed
	// unseen and left the mounts and the loop device behind.
	t.Cleanup(func() { _ = conn.Close() })
	nc := csipb.NewNodeClient(conn)
	staging, target := filepath.Join(tmp, "stage-restart"), filepath.Join(tmp, "pub-restart")
	stage := &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap, PublishContext: pub.PublishContext}
	_, err = nc.NodeStageVolume(ctx, stage)
	require.NoError(t, err)
	t.Cleanup(func() {
		if _, err := nc.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Errorf("NodeUnpublishVolume: %v", err)
		}
		if _, err := nc.NodeUnstageVolume(context.Background(), &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Errorf("NodeUnstageVolume: %v", err)
		}
	})
	_, err = nc.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap, PublishContext: pub.PublishContext})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(target, "before"), []byte("written before the restart"), 0o600))
	dev := mountSource(t, staging)
	require.Equal(t, pub.PublishContext["devicePath"], dev)

	restartAgent(t, restartNode)
	idc := csipb.NewIdentityClient(conn)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		r, err := idc.Probe(context.Background(), &csipb.ProbeRequest{})
		require.NoError(c, err)
		assert.True(c, r.GetReady().GetValue())
	}, 2*time.Minute, 250*time.Millisecond, "the restarted agent's node service is not ready")

	_, err = nc.NodeStageVolume(ctx, stage)
	require.NoError(t, err)
	require.Equal(t, dev, mountSource(t, staging), "NodeStage mounted another device")
	again, err := controller.ControllerPublishVolume(ctx, pubReq)
	require.NoError(t, err)
	require.Equal(t, dev, again.PublishContext["devicePath"], "the volume's device changed")
	got, err := os.ReadFile(filepath.Join(target, "before"))
	require.NoError(t, err)
	require.Equal(t, "written before the restart", string(got))
	f, err := os.Create(filepath.Join(target, "after"))
	require.NoError(t, err)
	_, err = f.WriteString("written after the restart")
	require.NoError(t, err)
	require.NoError(t, f.Sync(), "the mounted filesystem does not write through any more")
	require.NoError(t, f.Close())
}
