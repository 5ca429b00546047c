package csi

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
			waitHealth(t, id, nil)
			var reps v1.ReplicaList
			require.NoError(t, k8s.List(context.Background(), &reps, client.MatchingLabels{v1.LabelVolume: id}))
			require.NotEmpty(t, reps.Items)
			pid := int(reps.Items[0].Status.PID)
			require.Positive(t, pid)
			require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
			stopped := true
			t.Cleanup(func() {
				if stopped {
					_ = syscall.Kill(pid, syscall.SIGCONT)
				}
			})
			// A write makes the engine notice the replica that does not
			// answer (on a faulted volume it fails).
			writeThrough(dev)
			waitHealth(t, id, []csipb.VolumeHealthErrorType{c.want})
			if c.want != csipb.VolumeHealthErrorType_DEGRADED {
				return
			}
			require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
			stopped = false
			waitHealth(t, id, nil)
		})
	}
}

// writeThrough writes a block to the device and flushes it, ignoring
// errors.
func writeThrough(dev string) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.WriteAt(make([]byte, 4096), 0)
	_ = f.Sync()
}

// waitHealth waits until the node and controller services report exactly
// the given abnormal statuses for the volume.
func waitHealth(t *testing.T, id string, want []csipb.VolumeHealthErrorType) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := node.NodeGetVolumeHealth(context.Background(), &csipb.NodeGetVolumeHealthRequest{VolumeId: id})
		require.NoError(c, err)
		cr, err := controller.ControllerGetVolumeHealth(context.Background(), &csipb.ControllerGetVolumeHealthRequest{VolumeId: id})
		require.NoError(c, err)
		for _, h := range []*csipb.VolumeHealth{n.GetVolumeHealth(), cr.GetVolumeHealth()} {
			var got []csipb.VolumeHealthErrorType
			for _, s := range h.GetHealthStatuses() {
				got = append(got, s.Status)
			}
			assert.Equal(c, want, got)
		}
	}, 3*time.Minute, 250*time.Millisecond)
}
