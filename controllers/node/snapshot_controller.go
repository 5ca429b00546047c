package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/engine/control"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=snapshots,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=snapshots/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=snapshots/finalizers,verbs=update

// SnapshotReconciler takes the Snapshots of volumes whose engine runs on
// its node, through the engine's control endpoint (under the engine's I/O
// barrier, on every replica), and removes them from the replicas when the
// object is deleted.
type SnapshotReconciler struct {
	client.Client
	APIReader client.Reader
	Agent     *Agent
}

// SetupWithManager watches Snapshots and this node's Engines (a snapshot
// waits for its volume's engine to run).
func (r *SnapshotReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("node-snapshot").
		For(&cairnv1.Snapshot{}).
		Watches(&cairnv1.Engine{}, handler.EnqueueRequestsFromMapFunc(r.snapshotsOfEngine)).
		WithOptions(opts).
		Complete(r)
}

func (r *SnapshotReconciler) snapshotsOfEngine(ctx context.Context, o client.Object) []reconcile.Request {
	eng, ok := o.(*cairnv1.Engine)
	if !ok || eng.Spec.NodeID != r.Agent.opts.Name {
		return nil
	}
	var list cairnv1.SnapshotList
	if err := r.List(ctx, &list); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, s := range list.Items {
		if s.Spec.VolumeName == eng.Spec.VolumeName {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&s)})
		}
	}
	return out
}

// Reconcile takes or removes one snapshot when its volume's engine runs
// here; anything else waits for the engine (the manager starts one for a
// detached volume with pending snapshots).
func (r *SnapshotReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	snap := &cairnv1.Snapshot{}
	if err := r.Get(ctx, req.NamespacedName, snap); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	done := snap.Status.ReadyToUse || apimeta.IsStatusConditionTrue(snap.Status.Conditions, condStalled)
	if snap.DeletionTimestamp.IsZero() && done {
		return ctrl.Result{}, nil
	}
	cl, _, err := r.Agent.localEngine(ctx, r.Client, r.APIReader, snap.Spec.VolumeName)
	if cl == nil || err != nil {
		return ctrl.Result{}, err
	}
	ctx = log.IntoContext(ctx, log.FromContext(ctx).WithValues("snapshot", snap.Name, "volume", snap.Spec.VolumeName))
	if !snap.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.remove(ctx, cl, snap)
	}
	if !controllerutil.ContainsFinalizer(snap, cairnv1.FinalizerSnapshot) {
		patch := client.MergeFrom(snap.DeepCopy())
		controllerutil.AddFinalizer(snap, cairnv1.FinalizerSnapshot)
		return ctrl.Result{}, r.Patch(ctx, snap, patch)
	}
	p := newStatusPatcher(r.Client, snap)
	defer func() { retErr = errors.Join(retErr, p.patch(ctx, snap)) }()
	return r.take(ctx, cl, snap)
}

// take snapshots the volume on every replica; a snapshot of that name
// already there (a retry after a lost status update) counts as taken.
func (r *SnapshotReconciler) take(ctx context.Context, cl *control.Client, snap *cairnv1.Snapshot) (ctrl.Result, error) {
	st := &snap.Status
	err := cl.Snapshot(ctx, snap.Name, map[string]string{cairnv1.LabelSnapshot: snap.Name})
	switch {
	case errors.Is(err, engine.ErrInvalid):
		applyHealth(&st.Conditions, &st.ObservedGeneration, snap.Generation, health{stalled: true, reason: "Invalid", message: err.Error()})
		return ctrl.Result{}, reconcile.TerminalError(err)
	case err != nil && !errors.Is(err, engine.ErrSnapshotExists):
		applyHealth(&st.Conditions, &st.ObservedGeneration, snap.Generation, health{reconciling: true, reason: "SnapshotFailed", message: err.Error()})
		return ctrl.Result{}, fmt.Errorf("snapshot %s: %w", snap.Name, err)
	}
	est, err := cl.Status(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	now := metav1.NewTime(time.Now().UTC().Truncate(time.Second))
	st.ReadyToUse, st.CreationTime, st.RestoreSize = true, &now, resource.NewQuantity(est.Size, resource.BinarySI)
	applyHealth(&st.Conditions, &st.ObservedGeneration, snap.Generation, health{ready: true, reason: "Taken", message: "snapshot taken on every healthy replica"})
	log.FromContext(ctx).Info("Snapshot taken")
	r.Agent.recorder.Eventf(snap, nil, corev1.EventTypeNormal, "Taken", "Snapshot", "snapshot of %s taken", snap.Spec.VolumeName)
	return ctrl.Result{}, nil
}

// remove deletes the snapshot from the replicas, then the finalizer.
func (r *SnapshotReconciler) remove(ctx context.Context, cl *control.Client, snap *cairnv1.Snapshot) error {
	if !controllerutil.ContainsFinalizer(snap, cairnv1.FinalizerSnapshot) {
		return nil
	}
	if err := cl.RemoveSnapshot(ctx, snap.Name); err != nil && !errors.Is(err, engine.ErrNotFound) {
		return fmt.Errorf("remove snapshot %s: %w", snap.Name, err)
	}
	log.FromContext(ctx).Info("Snapshot removed from the replicas")
	patch := client.MergeFrom(snap.DeepCopy())
	controllerutil.RemoveFinalizer(snap, cairnv1.FinalizerSnapshot)
	return client.IgnoreNotFound(r.Patch(ctx, snap, patch))
}

// localEngine returns the control client of vol's engine when it runs on
// this node (nil otherwise) and the Engine object.
func (a *Agent) localEngine(ctx context.Context, c client.Reader, secrets client.Reader, vol string) (*control.Client, *cairnv1.Engine, error) {
	eng := &cairnv1.Engine{}
	err := c.Get(ctx, client.ObjectKey{Name: vol}, eng)
	if apierrors.IsNotFound(err) {
		return nil, nil, nil
	}
	if err != nil || eng.Spec.NodeID != a.opts.Name || eng.Status.State != stateRunning || !eng.DeletionTimestamp.IsZero() {
		return nil, nil, err
	}
	tokenFile, err := a.ensureTokenFile(ctx, secrets, vol)
	if err != nil {
		return nil, nil, err
	}
	cl, err := a.controls.get(a.controlAddr(vol), vol, tokenFile)
	return cl, eng, err
}
