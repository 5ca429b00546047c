package kubeletstub

import (
	"context"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
)

// resizer finishes an expansion the external-resizer left to the node:
// NodeExpandVolume where the claim is published (online), or when a pod
// next publishes it.
type resizer struct {
	*Stub
	recorder recorder.EventRecorder
}

// Reconcile expands a claim waiting for the node, where it is published.
func (s *resizer) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	pvc := &corev1.PersistentVolumeClaim{}
	if err := s.client.Get(ctx, req.NamespacedName, pvc); err != nil || !nodeResizePending(pvc) {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	pv := &corev1.PersistentVolume{}
	if err := s.client.Get(ctx, client.ObjectKey{Name: pvc.Spec.VolumeName}, pv); err != nil {
		return reconcile.Result{}, err
	}
	n, p := s.publication(pv.Name)
	if p == nil {
		return reconcile.Result{}, nil
	}
	if err := s.expandIfPending(ctx, n, p, pvc, pv); err != nil {
		s.recorder.Eventf(pvc, nil, corev1.EventTypeWarning, "VolumeResizeFailed", "NodeExpand", "on node %s: %v", n.Name, err)
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, nil
}

// nodeResizePending reports whether the resizer waits for the node to
// expand the claim's filesystem.
func nodeResizePending(pvc *corev1.PersistentVolumeClaim) bool {
	if pvc.Status.AllocatedResourceStatuses[corev1.ResourceStorage] == corev1.PersistentVolumeClaimNodeResizePending {
		return true
	}
	return slices.ContainsFunc(pvc.Status.Conditions, func(c corev1.PersistentVolumeClaimCondition) bool {
		return c.Type == corev1.PersistentVolumeClaimFileSystemResizePending && c.Status == corev1.ConditionTrue
	})
}

// publication finds a node where the PV is published.
func (s *Stub) publication(pv string) (*node, *published) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rec := range s.published {
		for _, p := range rec.volumes {
			if p.pv == pv {
				return s.nodes[rec.node], p
			}
		}
	}
	return nil, nil
}

// expandIfPending runs NodeExpandVolume when the claim waits for it and
// then records the new size as the kubelet does: status.capacity is the
// PV's, the resize conditions and the pending allocation status are gone.
func (s *Stub) expandIfPending(ctx context.Context, n *node, p *published, pvc *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) error {
	if !nodeResizePending(pvc) {
		return nil
	}
	size := pv.Spec.Capacity[corev1.ResourceStorage]
	if err := expand(ctx, n, p, size); err != nil {
		return err
	}
	patch := client.MergeFrom(pvc.DeepCopy())
	if pvc.Status.Capacity == nil {
		pvc.Status.Capacity = corev1.ResourceList{}
	}
	pvc.Status.Capacity[corev1.ResourceStorage] = size
	pvc.Status.Conditions = slices.DeleteFunc(pvc.Status.Conditions, func(c corev1.PersistentVolumeClaimCondition) bool {
		return c.Type == corev1.PersistentVolumeClaimFileSystemResizePending || c.Type == corev1.PersistentVolumeClaimResizing
	})
	delete(pvc.Status.AllocatedResourceStatuses, corev1.ResourceStorage)
	if err := s.client.Status().Patch(ctx, pvc, patch); err != nil {
		return err
	}
	log.FromContext(ctx).Info("Expanded volume on the node", "pvc", client.ObjectKeyFromObject(pvc), "size", size.String(), "node", n.Name)
	return nil
}
