package scheduler

import (
	"context"
	"maps"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// SetupWithManager registers the scheduler. Besides its schedules it
// watches the Snapshots and Backups they created (a finished one frees a
// concurrency slot), and the volumes, policies and DR volumes that decide
// which volumes a schedule applies to and which backups are pinned.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return r.setup(mgr, "recurringsnapshot", nil)
}

// setup registers the scheduler under name, limited to the schedules accept
// takes (nil: all).
func (r *Reconciler) setup(mgr ctrl.Manager, name string, accept func(string) bool) error {
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	r.accept = accept
	return ctrl.NewControllerManagedBy(mgr).
		Named(name).
		For(&v1.RecurringSnapshot{}, builder.WithPredicates(
			predicate.NewPredicateFuncs(func(o client.Object) bool { return r.accepts(o.GetName()) }),
			// Not its own status writes; annotations let a user (or a test) poke it.
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&v1.Snapshot{}, handler.EnqueueRequestsFromMapFunc(r.scheduleOf), builder.WithPredicates(outcomeChanged())).
		Watches(&v1.Backup{}, handler.EnqueueRequestsFromMapFunc(r.scheduleOf), builder.WithPredicates(outcomeChanged())).
		Watches(&v1.Volume{}, handler.EnqueueRequestsFromMapFunc(r.allSchedules), builder.WithPredicates(changed(volumeView))).
		Watches(&v1.VolumePolicy{}, handler.EnqueueRequestsFromMapFunc(r.allSchedules), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&v1.DisasterRecoveryVolume{}, handler.EnqueueRequestsFromMapFunc(r.allSchedules), builder.WithPredicates(changed(drView))).
		Complete(r)
}

func (r *Reconciler) accepts(schedule string) bool { return r.accept == nil || r.accept(schedule) }

// scheduleOf enqueues the schedule named by an object's
// v1.LabelRecurringSnapshot (a label holds a hash of a long name, so the
// schedules are matched by their label value).
func (r *Reconciler) scheduleOf(ctx context.Context, o client.Object) []reconcile.Request {
	value, ok := o.GetLabels()[v1.LabelRecurringSnapshot]
	if !ok {
		return nil
	}
	var out []reconcile.Request
	for _, req := range r.allSchedules(ctx, o) {
		if labelValue(req.Name) == value {
			out = append(out, req)
		}
	}
	return out
}

// allSchedules enqueues every schedule: a volume or policy change may
// change which volumes any of them applies to.
func (r *Reconciler) allSchedules(ctx context.Context, _ client.Object) []reconcile.Request {
	var list v1.RecurringSnapshotList
	if err := r.List(ctx, &list); err != nil {
		log.FromContext(ctx).Error(err, "List recurring snapshots")
		return nil
	}
	var out []reconcile.Request
	for _, rs := range list.Items {
		if r.accepts(rs.Name) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: rs.Name}})
		}
	}
	return out
}

// outcomeChanged passes Snapshots and Backups of a schedule when they
// appear, go, or finish (progress updates alone do not matter).
func outcomeChanged() predicate.Predicate {
	scheduled := func(o client.Object) bool { _, ok := o.GetLabels()[v1.LabelRecurringSnapshot]; return ok }
	return predicate.Funcs{
		CreateFunc:  func(e event.CreateEvent) bool { return scheduled(e.Object) },
		DeleteFunc:  func(e event.DeleteEvent) bool { return scheduled(e.Object) },
		GenericFunc: func(e event.GenericEvent) bool { return scheduled(e.Object) },
		UpdateFunc: func(e event.UpdateEvent) bool {
			return scheduled(e.ObjectNew) && (stateOf(e.ObjectOld) != stateOf(e.ObjectNew) ||
				e.ObjectOld.GetDeletionTimestamp().IsZero() != e.ObjectNew.GetDeletionTimestamp().IsZero())
		},
	}
}

// stateOf reads a Snapshot's or Backup's state.
func stateOf(o client.Object) objState {
	switch obj := o.(type) {
	case *v1.Snapshot:
		return fromSnapshot(obj).state
	case *v1.Backup:
		return fromBackup(obj).state
	}
	return inFlight
}

// changed passes creations, deletions and updates that change view.
func changed[T client.Object](view func(T) map[string]string) predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		a, okA := e.ObjectOld.(T)
		b, okB := e.ObjectNew.(T)
		return !okA || !okB || !maps.Equal(view(a), view(b))
	}}
}

// volumeView is what the scheduler reads from a Volume: its labels, the
// fields that exclude it or bring it in through a policy, and its pin.
func volumeView(v *v1.Volume) map[string]string {
	out := maps.Clone(v.Labels)
	if out == nil {
		out = map[string]string{}
	}
	// Keys that are not valid label keys cannot clash with labels.
	out["/standby"] = boolString(v.Spec.Standby)
	out["/deleting"] = boolString(!v.DeletionTimestamp.IsZero())
	out["/policy"] = v.Status.EffectivePolicy
	out["/restoredBackup"] = v.Status.RestoredBackup
	out["/restored"] = boolString(meta.IsStatusConditionTrue(v.Status.Conditions, v1.ConditionRestored))
	// The RPO gauge counts from the newest backup: refresh it when it moves.
	if t := v.Status.LastBackupTime; t != nil {
		out["/lastBackupTime"] = t.UTC().Format(time.RFC3339)
	}
	return out
}

// drView is the pin a DR volume holds.
func drView(d *v1.DisasterRecoveryVolume) map[string]string {
	return map[string]string{"lastRestoredBackup": d.Status.LastRestoredBackup}
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
