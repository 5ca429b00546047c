package kubeletstub

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
)

// podVolumes is what the stand-in published for one pod.
type podVolumes struct {
	key     types.NamespacedName
	node    string
	volumes map[string]*published // by pod volume name
}

// published is one PV published for a pod.
type published struct {
	pv       string
	handle   string
	staging  string
	target   string
	cap      *csipb.VolumeCapability
	readOnly bool
}

// stagingPath is where the kubelet stages a CSI volume: a directory for a
// filesystem, a per-PV directory for raw block.
func stagingPath(n *node, driver string, pv *corev1.PersistentVolume) string {
	if isBlock(pv) {
		return filepath.Join(n.Dir, "plugins", "kubernetes.io", "csi", "volumeDevices", "staging", pv.Name)
	}
	sum := sha256.Sum256([]byte(pv.Spec.CSI.VolumeHandle))
	return filepath.Join(n.Dir, "plugins", "kubernetes.io", "csi", driver, fmt.Sprintf("%x", sum), "globalmount")
}

// targetPath is where the kubelet publishes a pod's volume: the mount
// directory, or for raw block the device file.
func targetPath(n *node, pod *corev1.Pod, pv *corev1.PersistentVolume) string {
	if isBlock(pv) {
		return filepath.Join(n.Dir, "pods", string(pod.UID), "volumeDevices", "kubernetes.io~csi", pv.Name)
	}
	return filepath.Join(n.Dir, "pods", string(pod.UID), "volumes", "kubernetes.io~csi", pv.Name, "mount")
}

func isBlock(pv *corev1.PersistentVolume) bool {
	return pv.Spec.VolumeMode != nil && *pv.Spec.VolumeMode == corev1.PersistentVolumeBlock
}

// capability is the CSI volume capability of a PV, as the kubelet builds it.
func capability(pv *corev1.PersistentVolume) *csipb.VolumeCapability {
	mode := csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	for _, m := range pv.Spec.AccessModes {
		if m == corev1.ReadOnlyMany {
			mode = csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
		}
	}
	c := &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: mode}}
	if isBlock(pv) {
		c.AccessType = &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{
			FsType: pv.Spec.CSI.FSType, MountFlags: pv.Spec.MountOptions}}
	}
	return c
}

// stageAndPublish runs NodeStage and NodePublish for one pod volume; both
// are idempotent, so a repeat (also after a restart) changes nothing.
func stageAndPublish(ctx context.Context, n *node, p *published, pv *corev1.PersistentVolume, publishContext map[string]string) error {
	_, err := n.csi.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{
		VolumeId: p.handle, PublishContext: publishContext, StagingTargetPath: p.staging,
		VolumeCapability: p.cap, VolumeContext: pv.Spec.CSI.VolumeAttributes})
	if err != nil {
		return fmt.Errorf("NodeStageVolume: %w", err)
	}
	// The kubelet creates the target's parent; the driver creates the target.
	if err := os.MkdirAll(filepath.Dir(p.target), 0o750); err != nil {
		return err
	}
	_, err = n.csi.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{
		VolumeId: p.handle, PublishContext: publishContext, StagingTargetPath: p.staging, TargetPath: p.target,
		VolumeCapability: p.cap, Readonly: p.readOnly, VolumeContext: pv.Spec.CSI.VolumeAttributes})
	if err != nil {
		return fmt.Errorf("NodePublishVolume: %w", err)
	}
	return nil
}

// unpublish runs NodeUnpublish and, when unstage, NodeUnstage.
func unpublish(ctx context.Context, n *node, p *published, unstage bool) error {
	if _, err := n.csi.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: p.handle, TargetPath: p.target}); err != nil {
		return fmt.Errorf("NodeUnpublishVolume: %w", err)
	}
	if !unstage {
		return nil
	}
	if _, err := n.csi.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: p.handle, StagingTargetPath: p.staging}); err != nil {
		return fmt.Errorf("NodeUnstageVolume: %w", err)
	}
	return nil
}

// expand runs NodeExpandVolume to the PV's capacity.
func expand(ctx context.Context, n *node, p *published, size resource.Quantity) error {
	_, err := n.csi.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{
		VolumeId: p.handle, VolumePath: p.target, StagingTargetPath: p.staging,
		CapacityRange: &csipb.CapacityRange{RequiredBytes: size.Value()}, VolumeCapability: p.cap})
	if err != nil {
		return fmt.Errorf("NodeExpandVolume: %w", err)
	}
	return nil
}
