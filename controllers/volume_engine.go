package controllers

import (
	"context"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// ensureEngine keeps one Engine, named after the volume, where
// engineTarget says: on spec.nodeID while attached, or without a frontend
// on a replica's node while a detached volume has snapshots or backups to
// run. Moving it (or changing its frontend) deletes the old Engine first
// and creates the new one only once the old agent has flushed and stopped
// it, so a volume never has two writers.
func (r *VolumeReconciler) ensureEngine(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	node, frontend := s.engineTarget()
	if e := s.engine; e != nil && (node == "" || e.Spec.NodeID != node || e.Spec.Frontend != frontend) {
		if e.DeletionTimestamp.IsZero() {
			if err := r.Delete(ctx, e); client.IgnoreNotFound(err) != nil {
				return ctrl.Result{}, err
			}
			r.Recorder.Eventf(s.vol, e, corev1.EventTypeNormal, "Detaching", "Detach", "detaching from node %s", e.Spec.NodeID)
		}
		return ctrl.Result{}, nil
	}
	addrs := s.engineReplicas()
	if node == "" || len(addrs) == 0 {
		return ctrl.Result{}, nil
	}
	if s.engine == nil {
		return ctrl.Result{}, r.createEngine(ctx, s, node, frontend, addrs)
	}
	if !slices.Equal(s.engine.Spec.Replicas, addrs) || !s.engine.Spec.Size.Equal(s.vol.Spec.Size) {
		patch := client.MergeFrom(s.engine.DeepCopy())
		s.engine.Spec.Replicas, s.engine.Spec.Size = addrs, s.vol.Spec.Size
		return ctrl.Result{}, r.Patch(ctx, s.engine, patch)
	}
	return ctrl.Result{}, nil
}

// engineReplicas lists the addresses the engine should write to: every
// replica not being deleted whose agent reported where it listens, sorted.
func (s *volumeScope) engineReplicas() []string {
	var addrs []string
	for _, rep := range s.replicas {
		if rep.DeletionTimestamp.IsZero() && rep.Status.Address != "" {
			addrs = append(addrs, rep.Status.Address)
		}
	}
	slices.Sort(addrs)
	return addrs
}

func (r *VolumeReconciler) createEngine(ctx context.Context, s *volumeScope, node, frontend string, addrs []string) error {
	e := &v1.Engine{
		ObjectMeta: metav1.ObjectMeta{Name: s.vol.Name, Labels: map[string]string{v1.LabelVolume: s.vol.Name}},
		Spec:       v1.EngineSpec{VolumeName: s.vol.Name, NodeID: node, Frontend: frontend, Replicas: addrs, Size: s.vol.Spec.Size},
	}
	if err := controllerutil.SetControllerReference(s.vol, e, r.Scheme()); err != nil {
		return err
	}
	if err := r.Create(ctx, e); err != nil {
		return client.IgnoreAlreadyExists(err)
	}
	s.engine = e
	if frontend == frontendNone {
		log.FromContext(ctx).Info("Starting an engine without a frontend for snapshots and backups", "node", node)
		return nil
	}
	r.Recorder.Eventf(s.vol, e, corev1.EventTypeNormal, "Attaching", "Attach", "attaching on node %s", node)
	log.FromContext(ctx).Info("Attaching", "node", node)
	return nil
}

// reconcileDelete stops the engine, deletes every replica (their agents
// remove the data) and the token, then releases the Volume.
func (r *VolumeReconciler) reconcileDelete(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	s.vol.Status.State = v1.VolumeDeleting
	if _, err := r.loadState(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	if s.engine != nil {
		return ctrl.Result{}, client.IgnoreNotFound(r.Delete(ctx, s.engine))
	}
	for i := range s.replicas {
		if err := r.retireReplica(ctx, s, &s.replicas[i], "the volume is deleted"); err != nil {
			return ctrl.Result{}, err
		}
	}
	if len(s.replicas) > 0 {
		return ctrl.Result{}, nil // each replica's deletion requeues
	}
	if _, err := r.loadWork(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.releaseSnapshots(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	tok := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: v1.SystemNamespace, Name: v1.TokenSecretName(s.vol.Name)}}
	if err := r.Delete(ctx, tok); client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, err
	}
	patch := client.MergeFrom(s.vol.DeepCopy())
	controllerutil.RemoveFinalizer(s.vol, v1.FinalizerVolume)
	forgetVolume(s.vol.Name)
	return ctrl.Result{}, client.IgnoreNotFound(r.Patch(ctx, s.vol, patch))
}
