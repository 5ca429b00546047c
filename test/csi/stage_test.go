package csi

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

func fsCap(fs string) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fs}},
	}
}

// mountFS is the filesystem type mounted at path ("" when none).
func mountFS(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	fs := ""
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if f := strings.Fields(pre); ok && len(f) >= 5 && f[4] == path {
			fs = strings.Fields(post)[0]
		}
	}
	return fs
}

// TestStageFilesystems: for ext4 and xfs, NodeStage makes the filesystem
// on the volume's real block device and mounts it, NodePublish bind-mounts
// it, a file written there survives unstage and a second stage (no second
// mkfs), and NodeGetVolumeStats reports its bytes and inodes.
func TestStageFilesystems(t *testing.T) {
	t.Parallel()
	// mkfs.xfs refuses filesystems under 300 MiB; replicas are sparse.
	for fs, size := range map[string]int64{"ext4": 64 << 20, "xfs": 320 << 20} {
		t.Run(fs, func(t *testing.T) {
			id := newVolume(t, createReq("stage-"+fs, size))
			r, err := controller.ControllerPublishVolume(ctxT(t), &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: sanityNode, VolumeCapability: fsCap(fs)})
			require.NoError(t, err)
			staging, target := filepath.Join(tmp, "stage-"+fs), filepath.Join(tmp, "pub-"+fs)
			stage := &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: fsCap(fs), PublishContext: r.PublishContext}
			pub := &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: fsCap(fs), PublishContext: r.PublishContext}
			ctx := ctxT(t)
			_, err = node.NodeStageVolume(ctx, stage)
			require.NoError(t, err)
			require.Equal(t, fs, mountFS(t, staging))
			_, err = node.NodePublishVolume(ctx, pub)
			require.NoError(t, err)
			data := make([]byte, 1<<20)
			_, _ = rand.Read(data)
			require.NoError(t, os.WriteFile(filepath.Join(target, "f"), data, 0o600))
			stats, err := node.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
			require.NoError(t, err)
			require.Len(t, stats.Usage, 2)
			assert.Positive(t, stats.Usage[0].Total)
			assert.GreaterOrEqual(t, stats.Usage[0].Used, int64(len(data)))
			assert.Equal(t, csipb.VolumeUsage_INODES, stats.Usage[1].Unit)
			assert.Positive(t, stats.Usage[1].Used)

			_, err = node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
			require.NoError(t, err)
			_, err = node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
			require.NoError(t, err)
			require.Empty(t, mountFS(t, staging))
			_, err = node.NodeStageVolume(ctx, stage)
			require.NoError(t, err)
			got, err := os.ReadFile(filepath.Join(staging, "f"))
			require.NoError(t, err, "the filesystem was made again")
			require.True(t, bytes.Equal(data, got))
			_, err = node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
			require.NoError(t, err)
		})
	}
}

// TestRawBlock: a block volume is published as the device node at the
// target file; what is written through it reads back, and its stats are
// the device size.
func TestRawBlock(t *testing.T) {
	t.Parallel()
	const size = 16 << 20
	id := newVolume(t, createReq("raw-block", size))
	r, err := controller.ControllerPublishVolume(ctxT(t), &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: sanityNode, VolumeCapability: blockCap})
	require.NoError(t, err)
	ctx := ctxT(t)
	staging, target := filepath.Join(tmp, "stage-raw"), filepath.Join(tmp, "pub-raw", "dev")
	_, err = node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: blockCap, PublishContext: r.PublishContext})
	require.NoError(t, err)
	_, err = node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: blockCap, PublishContext: r.PublishContext})
	require.NoError(t, err)
	img := make(image, size)
	img.scribble(t, target, 1<<20, 256<<10)
	requireDevice(t, r.PublishContext["devicePath"], img)
	stats, err := node.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	require.NoError(t, err)
	require.Len(t, stats.Usage, 1)
	assert.Equal(t, int64(size), stats.Usage[0].Total)
	_, err = node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	require.NoError(t, err)
	assert.NoFileExists(t, target)
}

// TestHealthAbnormal: a volume whose replica process stops answering is
// reported DEGRADED (two replicas, one left) or INACCESSIBLE (its only
// replica: the volume faults) by NodeGetVolumeHealth and
// ControllerGetVolumeHealth; the degraded one is healthy again once the
// replica is back and rebuilt. The process is stopped (SIGSTOP), not
// killed: its agent would restart a killed one within a second, too soon
// to observe.
func TestHealthAbnormal(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		replicas string
		want     csipb.VolumeHealthErrorType
	}{
		{"2", csipb.VolumeHealthErrorType_DEGRADED},
		{"1", csipb.VolumeHealthErrorType_INACCESSIBLE},
	} {
		t.Run(c.want.String(), func(t *testing.T) {
			t.Parallel()
			req := createReq("health-"+strings.ToLower(c.want.String()), 8<<20)
			req.Parameters = map[string]string{"replicas": c.replicas}
			id := newVolume(t, req)
			dev := publish(t, id)
			waitHealth(t, id, nil, 0)
			rep := servingReplica(t, id)
			pid := int(rep.Status.PID)
			require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
			stopped := true
			t.Cleanup(func() {
				if stopped {
					_ = syscall.Kill(pid, syscall.SIGCONT)
				}
			})
			// A write makes the engine notice the replica that does not
			// answer: on a degraded volume it is acknowledged once the
			// replica is dropped, on a faulted one it fails.
			start := time.Now()
			err := writeThrough(dev)
			t.Logf("write+fsync through %s with replica %s (pid %d) stopped: %v after %v", dev, rep.Name, pid, err, time.Since(start).Round(time.Millisecond))
			if c.want == csipb.VolumeHealthErrorType_DEGRADED {
				require.NoError(t, err, "one healthy replica remains: the write must succeed")
			}
			waitHealth(t, id, []csipb.VolumeHealthErrorType{c.want}, pid)
			if c.want != csipb.VolumeHealthErrorType_DEGRADED {
				return
			}
			require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
			stopped = false
			waitHealth(t, id, nil, pid)
		})
	}
}

// servingReplica is a replica of the volume that its engine reports
// healthy, once the replica's status.PID is the process serving it (its
// command line names the replica): stopping that process is what must
// degrade the volume.
func servingReplica(t *testing.T, id string) v1.Replica {
	t.Helper()
	var rep v1.Replica
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var reps v1.ReplicaList
		require.NoError(c, k8s.List(context.Background(), &reps, client.MatchingLabels{v1.LabelVolume: id}))
		require.NotEmpty(c, reps.Items)
		var eng v1.Engine
		require.NoError(c, k8s.Get(context.Background(), clientKey(id), &eng))
		rep = reps.Items[0]
		require.Positive(c, rep.Status.PID)
		assert.Equal(c, "healthy", eng.Status.ReplicaModes[rep.Status.Address], "engine's mode of %s (%s)", rep.Name, rep.Status.Address)
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", rep.Status.PID))
		require.NoError(c, err)
		assert.Contains(c, string(cmdline), "\x00--replica\x00"+rep.Name+"\x00", "pid %d is not replica %s", rep.Status.PID, rep.Name)
	}, time.Minute, 250*time.Millisecond)
	return rep
}

// writeThrough writes a block to the device and flushes it.
func writeThrough(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, 4096), 0); err != nil {
		return err
	}
	return f.Sync()
}

// waitHealth waits until the node and controller services report exactly
// the given abnormal statuses for the volume; when they do not, it logs
// what the chain from the stopped replica process (pid, 0: none) to the
// Volume's status saw.
func waitHealth(t *testing.T, id string, want []csipb.VolumeHealthErrorType, pid int) {
	t.Helper()
	ok := assert.EventuallyWithT(t, func(c *assert.CollectT) {
		// Bounded, so a call that hangs is reported as such rather than
		// as the status the last answered call saw.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		n, err := node.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: id})
		require.NoError(c, err)
		cr, err := controller.ControllerGetVolumeHealth(ctx, &csipb.ControllerGetVolumeHealthRequest{VolumeId: id})
		require.NoError(c, err)
		for _, h := range []*csipb.VolumeHealth{n.GetVolumeHealth(), cr.GetVolumeHealth()} {
			var got []csipb.VolumeHealthErrorType
			for _, s := range h.GetHealthStatuses() {
				got = append(got, s.Status)
			}
			assert.Equal(c, want, got)
		}
	}, 3*time.Minute, 250*time.Millisecond)
	if !ok {
		t.Log(healthChain(id, pid))
		t.FailNow()
	}
}

// healthChain describes the volume's health as each link reports it: the
// stopped process's state, the Replicas' status, the Engine's status (the
// node agent's copy of the engine's) and the Volume's.
func healthChain(id string, pid int) string {
	ctx := context.Background()
	var b strings.Builder
	if pid > 0 {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		fmt.Fprintf(&b, "process %d: %s (err %v)\n", pid, strings.TrimSpace(string(stat)), err)
	}
	var reps v1.ReplicaList
	err := k8s.List(ctx, &reps, client.MatchingLabels{v1.LabelVolume: id})
	fmt.Fprintf(&b, "replicas (err %v):\n", err)
	for _, r := range reps.Items {
		fmt.Fprintf(&b, "  %s node %s address %s pid %d restarts %d state %s conditions %s\n", r.Name, r.Spec.NodeID, r.Status.Address, r.Status.PID, r.Status.Restarts, r.Status.State, conditions(r.Status.Conditions))
	}
	var eng v1.Engine
	err = k8s.Get(ctx, clientKey(id), &eng)
	fmt.Fprintf(&b, "engine (err %v): pid %d restarts %d state %s robustness %s modes %v conditions %s\n", err, eng.Status.PID, eng.Status.Restarts, eng.Status.State, eng.Status.Robustness, eng.Status.ReplicaModes, conditions(eng.Status.Conditions))
	var vol v1.Volume
	err = k8s.Get(ctx, clientKey(id), &vol)
	fmt.Fprintf(&b, "volume (err %v): state %s robustness %s replicas %+v conditions %s\n", err, vol.Status.State, vol.Status.Robustness, vol.Status.Replicas, conditions(vol.Status.Conditions))
	fmt.Fprintf(&b, "logs: %s (kept after a failing run)", filepath.Join(tmp, "dev", "nodes", "*", "log"))
	return b.String()
}

func conditions(cs []metav1.Condition) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s=%s/%s %q (%s)", c.Type, c.Status, c.Reason, c.Message, c.LastTransitionTime.Format(time.RFC3339)))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}
