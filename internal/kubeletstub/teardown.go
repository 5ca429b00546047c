package kubeletstub

import (
	"context"
	"os"
	"path/filepath"
	"slices"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// terminate unpublishes a deleted pod's volumes and then deletes the pod
// with grace period 0, as the kubelet confirms a pod has stopped.
func (r *podReconciler) terminate(ctx context.Context, n *node, pod *corev1.Pod) error {
	if err := r.resolve(ctx, n, pod); err != nil {
		return err
	}
	if err := r.teardown(ctx, pod.UID); err != nil {
		r.recorder.Eventf(pod, nil, corev1.EventTypeWarning, "FailedUnmount", "Unpublish", "%v", err)
		return err
	}
	if err := r.releaseAttachments(ctx, n, pod); err != nil {
		return err
	}
	err := r.client.Delete(ctx, pod, client.GracePeriodSeconds(0), client.Preconditions{UID: &pod.UID})
	return client.IgnoreNotFound(err)
}

// releaseAttachments deletes the VolumeAttachments made for the pod's
// claims that were never published (still attaching) when no other pod on
// the node uses the claim.
func (r *podReconciler) releaseAttachments(ctx context.Context, n *node, pod *corev1.Pod) error {
	for _, v := range claims(pod) {
		claim := v.PersistentVolumeClaim.ClaimName
		_, pv, msg, err := r.boundPV(ctx, pod.Namespace, claim)
		if err != nil || msg != "" {
			continue
		}
		others := r.podsWhere(ctx, pod.Namespace, func(p *corev1.Pod) bool {
			return p.UID != pod.UID && p.Spec.NodeName == n.Name && p.DeletionTimestamp.IsZero() &&
				slices.ContainsFunc(claims(p), func(v corev1.Volume) bool { return v.PersistentVolumeClaim.ClaimName == claim })
		})
		if len(others) > 0 {
			continue
		}
		va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: attachmentName(pv.Spec.CSI.VolumeHandle, r.driver, n.Name)}}
		if err := client.IgnoreNotFound(r.client.Delete(ctx, va)); err != nil {
			return err
		}
	}
	return nil
}

// resolve records where a pod's volumes are published when the stand-in
// has no record (it restarted after publishing them), so that they can be
// unpublished.
func (r *podReconciler) resolve(ctx context.Context, n *node, pod *corev1.Pod) error {
	r.mu.Lock()
	_, ok := r.published[pod.UID]
	r.mu.Unlock()
	if ok {
		return nil
	}
	for _, v := range claims(pod) {
		_, pv, msg, err := r.boundPV(ctx, pod.Namespace, v.PersistentVolumeClaim.ClaimName)
		if err != nil || msg != "" {
			continue // never published: nothing to undo
		}
		if _, err := os.Stat(targetPath(n, pod, pv)); err != nil {
			continue
		}
		r.remember(pod, n.Name, v.Name, &published{pv: pv.Name, handle: pv.Spec.CSI.VolumeHandle,
			staging: stagingPath(n, r.driver, pv), target: targetPath(n, pod, pv), cap: capability(pv)})
	}
	return nil
}

// teardownGone tears down what was published for pods named key that no
// longer exist (all of them, or all but the one with uid keep).
func (r *podReconciler) teardownGone(ctx context.Context, key types.NamespacedName, keep types.UID) error {
	r.mu.Lock()
	var gone []types.UID
	for uid, rec := range r.published {
		if rec.key == key && uid != keep {
			gone = append(gone, uid)
		}
	}
	r.mu.Unlock()
	for _, uid := range gone {
		if err := r.teardown(ctx, uid); err != nil {
			return err
		}
	}
	return nil
}

// teardown unpublishes every volume of a pod; a volume no other pod on the
// node uses is unstaged and its VolumeAttachment deleted (the csi-attacher
// then detaches it). The pod's record goes once all are done.
func (r *podReconciler) teardown(ctx context.Context, uid types.UID) error {
	r.mu.Lock()
	rec := r.published[uid]
	r.mu.Unlock()
	if rec == nil {
		return nil
	}
	n := r.nodes[rec.node]
	for name, p := range rec.volumes {
		last := !r.usedElsewhere(uid, rec.node, p.pv)
		if err := unpublish(ctx, n, p, last); err != nil {
			return err
		}
		if last {
			va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: attachmentName(p.handle, r.driver, rec.node)}}
			if err := client.IgnoreNotFound(r.client.Delete(ctx, va)); err != nil {
				return err
			}
		}
		log.FromContext(ctx).Info("Unpublished volume", "pod", rec.key, "pv", p.pv, "unstaged", last)
		r.mu.Lock()
		delete(rec.volumes, name)
		r.mu.Unlock()
	}
	removeEmptyPodDirs(filepath.Join(n.Dir, "pods", string(uid)))
	r.mu.Lock()
	delete(r.published, uid)
	r.mu.Unlock()
	return nil
}

// usedElsewhere reports whether another pod on the node has the PV
// published.
func (s *Stub) usedElsewhere(uid types.UID, node, pv string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for other, rec := range s.published {
		if other == uid || rec.node != node {
			continue
		}
		for _, p := range rec.volumes {
			if p.pv == pv {
				return true
			}
		}
	}
	return false
}

// removeEmptyPodDirs removes the pod's volume directories bottom-up; only
// empty directories go (os.Remove), so nothing still mounted is touched.
func removeEmptyPodDirs(dir string) {
	for _, sub := range []string{"volumes/kubernetes.io~csi", "volumeDevices/kubernetes.io~csi"} {
		entries, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range entries {
			_ = os.Remove(filepath.Join(dir, sub, e.Name()))
		}
		_ = os.Remove(filepath.Join(dir, sub))
		_ = os.Remove(filepath.Dir(filepath.Join(dir, sub)))
	}
	_ = os.Remove(dir)
}
