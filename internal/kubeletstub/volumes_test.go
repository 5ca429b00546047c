package kubeletstub

import (
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testPV(mode corev1.PersistentVolumeMode, access corev1.PersistentVolumeAccessMode) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-1"}, Spec: corev1.PersistentVolumeSpec{
		VolumeMode: &mode, AccessModes: []corev1.PersistentVolumeAccessMode{access}, MountOptions: []string{"noatime"},
		PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
			Driver: "csi.cairn.dev", VolumeHandle: "pvc-1", FSType: "xfs"}}}}
}

// TestCapabilityAndPaths: the capability and paths follow what the kubelet
// sends and uses for filesystem and raw block PVs.
func TestCapabilityAndPaths(t *testing.T) {
	n := &node{Node: Node{Name: "n1", Dir: "/d"}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: "u1"}}

	fs := testPV(corev1.PersistentVolumeFilesystem, corev1.ReadWriteOnce)
	c := capability(fs)
	require.Equal(t, csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, c.GetAccessMode().GetMode())
	require.Equal(t, "xfs", c.GetMount().GetFsType())
	require.Equal(t, []string{"noatime"}, c.GetMount().GetMountFlags())
	require.Equal(t, "/d/pods/u1/volumes/kubernetes.io~csi/pvc-1/mount", targetPath(n, pod, fs))
	require.Regexp(t, `^/d/plugins/kubernetes.io/csi/csi.cairn.dev/[0-9a-f]{64}/globalmount$`, stagingPath(n, "csi.cairn.dev", fs))

	block := testPV(corev1.PersistentVolumeBlock, corev1.ReadOnlyMany)
	c = capability(block)
	require.Equal(t, csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, c.GetAccessMode().GetMode())
	require.NotNil(t, c.GetBlock())
	require.Equal(t, "/d/pods/u1/volumeDevices/kubernetes.io~csi/pvc-1", targetPath(n, pod, block))
	require.Equal(t, "/d/plugins/kubernetes.io/csi/volumeDevices/staging/pvc-1", stagingPath(n, "csi.cairn.dev", block))
}

// TestNodeResizePending: either the condition (older resizers) or the
// allocated resource status (RecoverVolumeExpansionFailure) asks the node.
func TestNodeResizePending(t *testing.T) {
	pvc := &corev1.PersistentVolumeClaim{}
	require.False(t, nodeResizePending(pvc))
	pvc.Status.Conditions = []corev1.PersistentVolumeClaimCondition{{Type: corev1.PersistentVolumeClaimFileSystemResizePending, Status: corev1.ConditionTrue}}
	require.True(t, nodeResizePending(pvc))
	pvc.Status.Conditions = nil
	pvc.Status.AllocatedResourceStatuses = map[corev1.ResourceName]corev1.ClaimResourceStatus{
		corev1.ResourceStorage: corev1.PersistentVolumeClaimNodeResizePending}
	require.True(t, nodeResizePending(pvc))
}
