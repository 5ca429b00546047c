package controllers

import (
	"context"
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// followStandby moves a standby volume (spec.standby, set by its
// DisasterRecoveryVolume) to the backup its DR volume names in
// spec.fromBackup.backup once it holds an earlier one: status.restoredBackup
// moves on, Restored turns False until every replica's agent has applied
// the new backup, and each replica's spec.restore names it (the agents
// apply only the blocks that differ; see controllers/node/standby.go).
func (r *VolumeReconciler) followStandby(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	src := s.vol.Spec.FromBackup
	if !s.vol.Spec.Standby || src == nil || src.Backup == "" || s.vol.Status.RestoredBackup == "" {
		return ctrl.Result{}, nil
	}
	if s.vol.Status.RestoredBackup != src.Backup {
		log.FromContext(ctx).Info("Standby following a newer backup", "from", s.vol.Status.RestoredBackup, "to", src.Backup)
		s.vol.Status.RestoredBackup = src.Backup
		s.setRestored(false, "Restoring", fmt.Sprintf("applying backup %s of %s to every replica", src.Backup, src.Volume))
	}
	for i := range s.replicas {
		rep := &s.replicas[i]
		if !rep.DeletionTimestamp.IsZero() || rep.Spec.Restore == nil || rep.Spec.Restore.Backup == src.Backup {
			continue
		}
		patch := client.MergeFrom(rep.DeepCopy())
		rep.Spec.Restore.Backup = src.Backup
		if err := r.Patch(ctx, rep, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("point replica %s at backup %s: %w", rep.Name, src.Backup, err)
		}
	}
	return ctrl.Result{}, nil
}
