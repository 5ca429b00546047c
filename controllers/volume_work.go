package controllers

import (
	"context"
	"slices"

	"k8s.io/apimachinery/pkg/api/meta"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// volumeNameIndex indexes Snapshots and Backups by spec.volumeName.
const volumeNameIndex = "spec.volumeName"

// frontendNone is the Engine frontend of a detached volume's maintenance
// engine: no device, only the control endpoint snapshots and backups use.
const frontendNone = "none"

// Backup states the node agent reports.
const backupCompleted, backupFailed = "Completed", "Failed"

// loadWork reads the volume's Snapshots and Backups: whether any needs the
// engine (a snapshot to take or remove, a backup to run), and the newest
// completed backup for status.lastBackup.
func (r *VolumeReconciler) loadWork(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	var snaps v1.SnapshotList
	if err := r.List(ctx, &snaps, client.MatchingFields{volumeNameIndex: s.vol.Name}); err != nil {
		return ctrl.Result{}, err
	}
	s.snapshots = snaps.Items
	for _, sn := range snaps.Items {
		taken := sn.Status.ReadyToUse || meta.IsStatusConditionTrue(sn.Status.Conditions, v1.ConditionStalled)
		removing := !sn.DeletionTimestamp.IsZero() && controllerutil.ContainsFinalizer(&sn, v1.FinalizerSnapshot)
		s.work = s.work || removing || sn.DeletionTimestamp.IsZero() && !taken
	}
	var backups v1.BackupList
	if err := r.List(ctx, &backups, client.MatchingFields{volumeNameIndex: s.vol.Name}); err != nil {
		return ctrl.Result{}, err
	}
	st := &s.vol.Status
	for _, b := range backups.Items {
		done := b.Status.State == backupCompleted || b.Status.State == backupFailed
		s.work = s.work || b.Spec.BackupID == "" && b.DeletionTimestamp.IsZero() && !done
		if b.Status.State == backupCompleted && b.Status.CompletionTime != nil &&
			(st.LastBackupTime == nil || st.LastBackupTime.Before(b.Status.CompletionTime)) {
			st.LastBackup, st.LastBackupTime = b.Name, b.Status.CompletionTime.DeepCopy()
		}
	}
	return ctrl.Result{}, nil
}

// engineTarget is where the volume's engine should run and with which
// frontend: on spec.nodeID while attached; on a node holding a replica,
// without a frontend, while a detached volume has snapshot or backup work;
// nowhere otherwise (and never for a standby or a volume being restored).
func (s *volumeScope) engineTarget() (node, frontend string) {
	switch {
	case s.vol.Spec.Standby || s.restoring():
		return "", ""
	case s.vol.Spec.NodeID != "":
		return s.vol.Spec.NodeID, ""
	case s.work:
		return s.maintenanceNode(), frontendNone
	}
	return "", ""
}

// maintenanceNode is the first (by name) ready node holding a set-up
// replica of the volume.
func (s *volumeScope) maintenanceNode() string {
	var nodes []string
	for _, rep := range s.replicas {
		if n := s.nodes[rep.Spec.NodeID]; n != nil && isReady(n) && rep.Status.Address != "" && rep.DeletionTimestamp.IsZero() {
			nodes = append(nodes, rep.Spec.NodeID)
		}
	}
	if len(nodes) == 0 {
		return ""
	}
	return slices.Min(nodes)
}

// releaseSnapshots drops the replica-data finalizer of a deleted volume's
// Snapshots: their replicas, and with them the snapshots, are gone.
func (r *VolumeReconciler) releaseSnapshots(ctx context.Context, s *volumeScope) error {
	for i := range s.snapshots {
		sn := &s.snapshots[i]
		patch := client.MergeFrom(sn.DeepCopy())
		if controllerutil.RemoveFinalizer(sn, v1.FinalizerSnapshot) {
			if err := r.Patch(ctx, sn, patch); client.IgnoreNotFound(err) != nil {
				return err
			}
		}
	}
	return nil
}

// volumeOfWork maps a Snapshot or Backup to its volume.
func volumeOfWork(_ context.Context, o client.Object) []reconcile.Request {
	var vol string
	switch w := o.(type) {
	case *v1.Snapshot:
		vol = w.Spec.VolumeName
	case *v1.Backup:
		vol = w.Spec.VolumeName
	}
	if vol == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: client.ObjectKey{Name: vol}}}
}
