package csi

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/testutil"
)

// The sidecar tests go through the real external-provisioner, -attacher,
// -snapshotter, -resizer and snapshot-controller that cairn dev runs, and
// its kubelet stand-in, the way a workload in a cluster does: PVCs, Pods,
// VolumeSnapshots. They run in parallel after the serial CSI tests.

const (
	sidecarNS     = "sidecars"
	sidecarPolicy = "sidecars"
	sidecarClass  = "cairn-sidecars"
	backupClass   = "cairn-backup"
	// condPublished is the stand-in's Pod condition.
	condPublished = corev1.PodConditionType("cairn.dev/VolumesPublished")
)

var (
	classesOnce sync.Once
	classesErr  error

	snapshotGVK      = schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshot"}
	snapshotClassGVK = schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshotClass"}
)

// sidecarCtx bounds one sidecar test; the steps wait on conditions.
func sidecarCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestSidecarsFilesystem: a PVC of a policy's StorageClass is provisioned
// and bound by the real provisioner, published by the stand-in on a node
// after the real attacher attached it; files written there are in a
// VolumeSnapshot (backup type) the real snapshotter makes ReadyToUse, and
// in a PVC restored from it; growing the PVC grows the mounted filesystem
// online through the real resizer.
func TestSidecarsFilesystem(t *testing.T) {
	t.Parallel()
	ctx := sidecarCtx(t)
	requireSidecars(t)
	defer printSidecarLogsOnFailure(t)
	setupSidecarClasses(t, ctx)

	pvc := newPVC("fs-data", "320Mi", corev1.PersistentVolumeFilesystem, nil)
	createCleanup(t, ctx, pvc)
	waitBound(t, ctx, pvc)
	pod := newPod("fs-writer", "dev-node-1", pvc.Name, false)
	createCleanup(t, ctx, pod)
	dir := waitPublished(t, ctx, pod, "data")

	files := writeFiles(t, dir, 4)
	snap := newSnapshot("fs-data-snap", pvc.Name)
	createCleanup(t, ctx, snap)
	waitFor(t, ctx, "VolumeSnapshot ready to use", func() (bool, error) {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(snap), snap); err != nil {
			return false, err
		}
		ready, _, _ := unstructured.NestedBool(snap.Object, "status", "readyToUse")
		return ready, nil
	})

	restored := newPVC("fs-restored", "320Mi", corev1.PersistentVolumeFilesystem, &corev1.TypedLocalObjectReference{
		APIGroup: ptr("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: snap.GetName()})
	createCleanup(t, ctx, restored)
	waitBound(t, ctx, restored)
	reader := newPod("fs-reader", "dev-node-2", restored.Name, false)
	createCleanup(t, ctx, reader)
	rdir := waitPublished(t, ctx, reader, "data")
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(rdir, name))
		require.NoError(t, err, "restored file %s", name)
		require.True(t, bytes.Equal(want, got), "restored file %s differs", name)
	}

	growOnline(t, ctx, pvc, dir)
	deletePodAndWaitDetached(t, ctx, pod, pvc, dir)
}

// growOnline grows the published PVC to 512Mi and waits until the
// resizer and the stand-in report it and the mounted filesystem has grown.
func growOnline(t *testing.T, ctx context.Context, pvc *corev1.PersistentVolumeClaim, dir string) {
	before := fsBytes(t, dir)
	require.NoError(t, k8s.Get(ctx, client.ObjectKeyFromObject(pvc), pvc))
	patch := client.MergeFrom(pvc.DeepCopy())
	pvc.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("512Mi")
	require.NoError(t, k8s.Patch(ctx, pvc, patch))
	want := resource.MustParse("512Mi")
	waitFor(t, ctx, "PVC capacity 512Mi", func() (bool, error) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(pvc), pvc)
		got := pvc.Status.Capacity[corev1.ResourceStorage]
		return err == nil && got.Cmp(want) == 0, err
	})
	after := fsBytes(t, dir)
	require.Greater(t, after, before+150<<20, "the mounted filesystem grew from %d bytes", before)
	// The files written before are still there on the grown filesystem.
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.NotEmpty(t, entries)
}

// TestSidecarsBlock: a raw block PVC is published as a device file that
// reads back what was written to it, bypassing the page cache.
func TestSidecarsBlock(t *testing.T) {
	t.Parallel()
	ctx := sidecarCtx(t)
	requireSidecars(t)
	defer printSidecarLogsOnFailure(t)
	setupSidecarClasses(t, ctx)

	pvc := newPVC("raw-data", "64Mi", corev1.PersistentVolumeBlock, nil)
	createCleanup(t, ctx, pvc)
	waitBound(t, ctx, pvc)
	pod := newPod("raw-user", "dev-node-2", pvc.Name, true)
	createCleanup(t, ctx, pod)
	dev := waitPublished(t, ctx, pod, "data")

	st, err := os.Stat(dev)
	require.NoError(t, err)
	require.NotZero(t, st.Mode()&os.ModeDevice, "%s is a device file", dev)
	want := make([]byte, 1<<20)
	_, _ = rand.Read(want)
	directIO(t, dev, 8<<20, want, true)
	got := make([]byte, len(want))
	directIO(t, dev, 8<<20, got, false)
	require.True(t, bytes.Equal(want, got), "raw block data read back differs")

	deletePodAndWaitDetached(t, ctx, pod, pvc, dev)
}

// directIO writes or reads buf at off with O_DIRECT (through the engine,
// not the page cache).
func directIO(t *testing.T, path string, off int64, buf []byte, write bool) {
	flags := os.O_RDONLY
	if write {
		flags = os.O_WRONLY
	}
	f, err := os.OpenFile(path, flags|unix.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	aligned, err := unix.Mmap(-1, 0, len(buf), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	defer func() { _ = unix.Munmap(aligned) }()
	if write {
		copy(aligned, buf)
		_, err = f.WriteAt(aligned, off)
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		return
	}
	_, err = f.ReadAt(aligned, off)
	require.NoError(t, err)
	copy(buf, aligned)
}

// requireSidecars fails (or skips off CI) when the sidecars cairn dev runs
// are not built.
func requireSidecars(t *testing.T) {
	for _, name := range []string{"csi-provisioner", "csi-attacher", "csi-snapshotter", "csi-resizer", "snapshot-controller"} {
		testutil.RequireTool(t, name)
	}
}

// setupSidecarClasses creates, once for all sidecar tests, the namespace,
// a VolumePolicy with one replica (its StorageClass, xfs) and a backup-type
// VolumeSnapshotClass writing to the suite's BackupTarget. xfs because
// growing a mounted ext4 needs CAP_SYS_RESOURCE, which the test machines'
// containers do not grant (resize2fs: Permission denied); xfs_growfs needs
// only CAP_SYS_ADMIN. An xfs filesystem is at least 300MB.
func setupSidecarClasses(t *testing.T, ctx context.Context) {
	classesOnce.Do(func() {
		classesErr = createClasses(ctx)
	})
	require.NoError(t, classesErr)
	waitFor(t, ctx, "StorageClass "+sidecarClass, func() (bool, error) {
		err := k8s.Get(ctx, clientKey(sidecarClass), &storagev1.StorageClass{})
		return err == nil, client.IgnoreNotFound(err)
	})
}

func createClasses(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: sidecarNS}}
	p := &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: sidecarPolicy}}
	p.Spec.Replicas = 1
	p.Spec.StorageClass = &v1.StorageClassTemplate{Name: sidecarClass, FSType: "xfs"}
	vsc := &unstructured.Unstructured{}
	vsc.SetGroupVersionKind(snapshotClassGVK)
	vsc.SetName(backupClass)
	vsc.Object["driver"] = "csi.cairn.dev"
	vsc.Object["deletionPolicy"] = "Delete"
	vsc.Object["parameters"] = map[string]any{"type": "backup", "backupTarget": backupTarget}
	for _, o := range []client.Object{ns, p, vsc} {
		if err := k8s.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %T %s: %w", o, o.GetName(), err)
		}
	}
	return nil
}

func newPVC(name, size string, mode corev1.PersistentVolumeMode, source *corev1.TypedLocalObjectReference) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: sidecarNS, Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr(sidecarClass),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:       &mode,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
			DataSource:       source,
		},
	}
}

// newPod is a pod bound to node (no scheduler runs) using the claim as
// volume "data", mounted or as a raw device.
func newPod(name, node, claim string, block bool) *corev1.Pod {
	c := corev1.Container{Name: "app", Image: "registry.k8s.io/pause:3.10"}
	if block {
		c.VolumeDevices = []corev1.VolumeDevice{{Name: "data", DevicePath: "/dev/xvda"}}
	} else {
		c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: sidecarNS, Name: name},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{c},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}},
	}
}

func newSnapshot(name, claim string) *unstructured.Unstructured {
	s := &unstructured.Unstructured{}
	s.SetGroupVersionKind(snapshotGVK)
	s.SetNamespace(sidecarNS)
	s.SetName(name)
	s.Object["spec"] = map[string]any{"volumeSnapshotClassName": backupClass, "source": map[string]any{"persistentVolumeClaimName": claim}}
	return s
}

// createCleanup creates obj and deletes it when the test ends, waiting
// until it is gone so that volumes are not left behind.
func createCleanup(t *testing.T, ctx context.Context, obj client.Object) {
	require.NoError(t, k8s.Create(ctx, obj))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := client.IgnoreNotFound(k8s.Delete(ctx, obj)); err != nil {
			t.Errorf("delete %s: %v", obj.GetName(), err)
			return
		}
		waitFor(t, ctx, "deletion of "+obj.GetName(), func() (bool, error) {
			err := k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)
			return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
		})
	})
}

func waitBound(t *testing.T, ctx context.Context, pvc *corev1.PersistentVolumeClaim) {
	waitFor(t, ctx, "PVC "+pvc.Name+" Bound", func() (bool, error) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(pvc), pvc)
		return err == nil && pvc.Status.Phase == corev1.ClaimBound, err
	})
}

// waitPublished waits for the stand-in's condition on the pod and returns
// where the volume is published.
func waitPublished(t *testing.T, ctx context.Context, pod *corev1.Pod, volume string) string {
	var path string
	waitFor(t, ctx, "pod "+pod.Name+" volumes published", func() (bool, error) {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return false, err
		}
		for _, c := range pod.Status.Conditions {
			if c.Type != condPublished || c.Status != corev1.ConditionTrue {
				continue
			}
			for _, pair := range strings.Split(c.Message, ", ") {
				if name, p, ok := strings.Cut(pair, "="); ok && name == volume {
					path = p
					return true, nil
				}
			}
		}
		return false, nil
	})
	return path
}

// deletePodAndWaitDetached deletes the pod as a user would (graceful) and
// waits until the stand-in unpublished it and deleted the pod, and the
// attacher detached the claim's volume from the pod's node.
func deletePodAndWaitDetached(t *testing.T, ctx context.Context, pod *corev1.Pod, pvc *corev1.PersistentVolumeClaim, path string) {
	require.NoError(t, k8s.Delete(ctx, pod))
	waitFor(t, ctx, "pod "+pod.Name+" deleted", func() (bool, error) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{})
		return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
	})
	_, err := os.Stat(path)
	require.True(t, os.IsNotExist(err), "%s is gone after the pod (%v)", path, err)
	waitFor(t, ctx, "VolumeAttachment of "+pvc.Spec.VolumeName+" on "+pod.Spec.NodeName+" deleted", func() (bool, error) {
		var vas storagev1.VolumeAttachmentList
		if err := k8s.List(ctx, &vas); err != nil {
			return false, err
		}
		for _, va := range vas.Items {
			if va.Spec.NodeName == pod.Spec.NodeName && ptrValue(va.Spec.Source.PersistentVolumeName) == pvc.Spec.VolumeName {
				return false, nil
			}
		}
		return true, nil
	})
	pv := &corev1.PersistentVolume{}
	require.NoError(t, k8s.Get(ctx, clientKey(pvc.Spec.VolumeName), pv))
	vol := &v1.Volume{}
	require.NoError(t, k8s.Get(ctx, clientKey(pv.Spec.CSI.VolumeHandle), vol))
	require.Empty(t, vol.Spec.NodeID, "the volume is detached")
}

func ptrValue(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// writeFiles writes n files of random data and syncs them to the device.
func writeFiles(t *testing.T, dir string, n int) map[string][]byte {
	files := map[string][]byte{}
	for i := range n {
		data := make([]byte, 256<<10+i)
		_, _ = rand.Read(data)
		name := fmt.Sprintf("file-%d", i)
		f, err := os.Create(filepath.Join(dir, name))
		require.NoError(t, err)
		_, err = f.Write(data)
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		require.NoError(t, f.Close())
		files[name] = data
	}
	d, err := os.Open(dir)
	require.NoError(t, err)
	require.NoError(t, d.Sync())
	require.NoError(t, d.Close())
	return files
}

func fsBytes(t *testing.T, dir string) uint64 {
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(dir, &st))
	return st.Blocks * uint64(st.Bsize)
}

// waitFor polls cond until it holds; an error from cond or the end of ctx
// fails the test.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() (bool, error)) {
	t.Helper()
	for {
		ok, err := cond()
		require.NoError(t, err, what)
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not reached: %v", what, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// printSidecarLogsOnFailure prints the end of the sidecars' and node
// agents' logs when the test failed.
func printSidecarLogsOnFailure(t *testing.T) {
	if !t.Failed() {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(tmp, "dev", "csi", "*.log"))
	nodes, _ := filepath.Glob(filepath.Join(tmp, "dev", "nodes", "*", "node.log"))
	for _, l := range append(append(logs, nodes...), devOut.Name()) {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		t.Logf("==> %s (last %d of %d lines) <==\n%s", l, min(20, len(lines)), len(lines), strings.Join(lines[max(0, len(lines)-20):], "\n"))
	}
}

func ptr[T any](v T) *T { return &v }
