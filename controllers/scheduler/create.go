package scheduler

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// create starts the run scheduled at run on vol: one Snapshot or Backup
// with a deterministic name. AlreadyExists means the run was started
// before; a same-named object of another schedule or volume makes it try
// the hashed name.
func (r *Reconciler) create(ctx context.Context, s *scope, vol *v1.Volume, run time.Time) error {
	for _, hashed := range []bool{false, true} {
		obj, err := r.newObject(s.rs, vol, run, hashed)
		if err != nil {
			return err
		}
		err = r.Create(ctx, obj)
		if err == nil {
			r.started(ctx, s, obj, run)
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s %s: %w", kindOf(obj), obj.GetName(), err)
		}
		existing, err := r.existing(ctx, obj)
		if err != nil {
			return err
		}
		if existing == nil || sameRun(existing, s.rs.Name, vol.Name, run) {
			// Started by an earlier reconcile (or gone since): the run's slot
			// stays taken until a reconcile sees the object.
			s.objs.add(runObject{obj: obj, kind: kindOf(obj), volume: vol.Name, run: run})
			return nil
		}
	}
	return fmt.Errorf("create the run %s of volume %s: both names are taken by other objects", stamp(run), vol.Name)
}

// newObject builds the run's Snapshot (owned by the volume, whose replicas
// hold it) or Backup (no owner: backups outlive volumes and schedules).
// Neither is ever owned by the schedule.
func (r *Reconciler) newObject(rs *v1.RecurringSnapshot, vol *v1.Volume, run time.Time, hashed bool) (client.Object, error) {
	meta := metav1.ObjectMeta{
		Name: objectName(rs.Name, vol.Name, run, hashed),
		Labels: map[string]string{
			v1.LabelVolume:            labelValue(vol.Name),
			v1.LabelRecurringSnapshot: labelValue(rs.Name),
		},
		Annotations: map[string]string{v1.AnnotationScheduledTime: run.UTC().Format(time.RFC3339)},
	}
	if rs.Spec.Action == v1.ActionBackup {
		return &v1.Backup{ObjectMeta: meta, Spec: v1.BackupSpec{
			VolumeName: vol.Name, BackupTargetRef: rs.Spec.BackupTargetRef, DeletePolicy: "Delete",
		}}, nil
	}
	snap := &v1.Snapshot{ObjectMeta: meta, Spec: v1.SnapshotSpec{VolumeName: vol.Name}}
	if err := controllerutil.SetControllerReference(vol, snap, r.Scheme()); err != nil {
		return nil, err
	}
	return snap, nil
}

// started logs the new object, records it, and reports it in an event.
func (r *Reconciler) started(ctx context.Context, s *scope, obj client.Object, run time.Time) {
	o := runObject{obj: obj, kind: kindOf(obj), volume: volumeOf(obj), run: run}
	s.objs.add(o)
	log.FromContext(ctx).Info("Run started", "kind", o.kind, "name", obj.GetName(), "volume", o.volume, "run", run.UTC())
	r.normal(s.rs, "RunStarted", "started %s %s of volume %s (run %s)", o.kind, obj.GetName(), o.volume, stamp(run))
}

// existing reads the object holding obj's name, uncached; nil when it is gone.
func (r *Reconciler) existing(ctx context.Context, obj client.Object) (client.Object, error) {
	cur := obj.DeepCopyObject().(client.Object)
	err := r.APIReader.Get(ctx, types.NamespacedName{Name: obj.GetName()}, cur)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return cur, err
}

// sameRun reports whether obj was created by the schedule's run at run for volume.
func sameRun(obj client.Object, schedule, volume string, run time.Time) bool {
	return obj.GetLabels()[v1.LabelRecurringSnapshot] == labelValue(schedule) &&
		volumeOf(obj) == volume && runTime(obj).Equal(run)
}

func kindOf(obj client.Object) string {
	if _, ok := obj.(*v1.Backup); ok {
		return "Backup"
	}
	return "Snapshot"
}

func volumeOf(obj client.Object) string {
	switch o := obj.(type) {
	case *v1.Backup:
		return o.Spec.VolumeName
	case *v1.Snapshot:
		return o.Spec.VolumeName
	}
	return ""
}
