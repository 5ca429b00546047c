package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/engine/backupstore"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backups,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backups/finalizers,verbs=update

// BackupReconciler deletes a backup from its target when its Backup object
// with deletePolicy Delete is deleted (a finalizer holds the object until
// then). With the default Retain, deleting the object leaves the backup.
// The node agent on the volume's engine node runs the backup itself.
type BackupReconciler struct {
	client.Client
	Recorder recorder.EventRecorder
	// Stores opens targets (shared with the BackupTarget controller).
	Stores *targets.Cache

	started  time.Time
	mu       sync.Mutex
	observed map[string]bool // backups observed, by name, until deleted
}

// SetupWithManager watches Backups.
func (r *BackupReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Stores == nil {
		r.Stores = &targets.Cache{}
	}
	r.started, r.observed = time.Now(), map[string]bool{}
	return ctrl.NewControllerManagedBy(mgr).For(&v1.Backup{}).Named("backup").Complete(r)
}

// Reconcile keeps the data finalizer on Delete backups and honours it.
func (r *BackupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	b := &v1.Backup{}
	if err := r.Get(ctx, req.NamespacedName, b); err != nil {
		if client.IgnoreNotFound(err) == nil {
			r.mu.Lock()
			delete(r.observed, req.Name)
			r.mu.Unlock()
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	r.observe(b)
	wants := b.Spec.DeletePolicy == "Delete"
	has := controllerutil.ContainsFinalizer(b, v1.FinalizerBackupData)
	switch {
	case b.DeletionTimestamp.IsZero() && wants && !has:
		patch := client.MergeFrom(b.DeepCopy())
		controllerutil.AddFinalizer(b, v1.FinalizerBackupData)
		return ctrl.Result{}, r.Patch(ctx, b, patch)
	case b.DeletionTimestamp.IsZero() || !has:
		return ctrl.Result{}, nil
	}
	if err := r.deleteRemote(ctx, b); errors.Is(err, backupstore.ErrPinned) {
		// A DR standby (maybe in another cluster) still needs it; its pin
		// expires if that site is gone.
		r.Recorder.Eventf(b, nil, corev1.EventTypeNormal, "Pinned", "Delete", "backup kept in the target while a DR standby needs it: %v", err)
		return ctrl.Result{RequeueAfter: pinnedRetry}, nil
	} else if err != nil {
		return ctrl.Result{}, err
	}
	patch := client.MergeFrom(b.DeepCopy())
	controllerutil.RemoveFinalizer(b, v1.FinalizerBackupData)
	return ctrl.Result{}, client.IgnoreNotFound(r.Patch(ctx, b, patch))
}

// pinnedRetry is how often the deletion of a pinned backup is retried.
const pinnedRetry = time.Minute

// deleteRemote deletes the backup (and the blocks no other backup uses)
// from the target; a backup never completed, or already gone, is fine.
func (r *BackupReconciler) deleteRemote(ctx context.Context, b *v1.Backup) error {
	id := b.Spec.BackupID
	if id == "" {
		id = b.Status.BackupID
	}
	if id == "" {
		return nil
	}
	store, err := r.Stores.Open(ctx, r.Client, string(b.Spec.BackupTargetRef), targets.DefaultTimeout)
	if err != nil {
		return fmt.Errorf("open the target to delete backup %s: %w", id, err)
	}
	res, err := store.Delete(ctx, b.Spec.VolumeName, id)
	if err != nil && !errors.Is(err, backupstore.ErrBackupNotFound) {
		return fmt.Errorf("delete backup %s of %s: %w", id, b.Spec.VolumeName, err)
	}
	log.FromContext(ctx).Info("Backup deleted from the target", "backup", b.Name, "backupID", id, "volume", b.Spec.VolumeName, "blocksDeleted", res.BlocksDeleted, "blocksDeferred", res.Deferred)
	r.Recorder.Eventf(b, nil, corev1.EventTypeNormal, "Deleted", "Delete", "backup %s deleted from BackupTarget %s", id, b.Spec.BackupTargetRef)
	return nil
}

// observe records a backup's duration and bytes once, when it completed
// while this manager ran (older ones were observed by an earlier one).
func (r *BackupReconciler) observe(b *v1.Backup) {
	t := b.Status.CompletionTime
	if b.Status.State != backupCompleted || b.Spec.BackupID != "" || t == nil || t.Time.Before(r.started.Add(-time.Second)) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.observed[b.Name] {
		return
	}
	r.observed[b.Name] = true
	recordBackupCompleted(b)
}
