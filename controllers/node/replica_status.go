package node

import (
	"errors"
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// Replica and Engine status.state values.
const (
	stateRestoring = "Restoring"
	stateStopped   = "Stopped"
	stateStarting  = "Starting"
	stateRunning   = "Running"
	stateError     = "Error"
)

// setReplicaStatus derives the Replica's status from one reconcile's
// observations and says when to look again.
func setReplicaStatus(s *replicaScope) ctrl.Result {
	st := &s.obj.Status
	if s.address != "" {
		st.Address = s.address
	}
	st.PID, st.Restarts = int32(s.proc.PID), int32(s.proc.Restarts)
	if s.restored != "" {
		st.RestoredBackup = s.restored
	}
	if s.copied != "" {
		st.CopiedSnapshot = s.copied
	}
	st.RestoreProgress = s.restorePercent
	if s.lastRestore != nil {
		st.LastRestore = s.lastRestore
	}
	h, state, res := replicaHealth(s)
	st.State = state
	applyHealth(&st.Conditions, &st.ObservedGeneration, s.obj.Generation, h)
	return res
}

// replicaHealth is the pure part of setReplicaStatus.
func replicaHealth(s *replicaScope) (health, string, ctrl.Result) {
	switch {
	case errors.Is(s.err, errRestoreFailed):
		return health{stalled: true, reason: "RestoreFailed", message: errors.Unwrap(s.err).Error()}, stateError, ctrl.Result{}
	case errors.Is(s.err, reconcile.TerminalError(nil)):
		return health{stalled: true, reason: "InvalidSpec", message: errors.Unwrap(s.err).Error()}, stateError, ctrl.Result{}
	case errors.Is(s.err, errRestoreWaiting):
		return health{reconciling: true, reason: "WaitingForBackupTarget", message: s.err.Error()}, stateRestoring, ctrl.Result{}
	case errors.Is(s.err, errCopyWaiting):
		return health{reconciling: true, reason: "WaitingForSource", message: s.err.Error()}, stateRestoring, ctrl.Result{}
	case s.copying:
		return health{reconciling: true, reason: "Restoring", message: fmt.Sprintf("filling the replica from snapshot %s of %s: %d%%", s.obj.Spec.CopyFrom.Snapshot, s.obj.Spec.CopyFrom.Volume, s.restorePercent)}, stateRestoring, ctrl.Result{RequeueAfter: restorePoll}
	case s.restoring:
		return health{reconciling: true, reason: "Restoring", message: fmt.Sprintf("filling the replica from backup %s of %s: %d%%", s.obj.Spec.Restore.Backup, s.obj.Spec.Restore.Volume, s.restorePercent)}, stateRestoring, ctrl.Result{RequeueAfter: restorePoll}
	case errors.Is(s.err, errNoToken):
		return health{reconciling: true, reason: "WaitingForToken", message: s.err.Error()}, stateStarting, ctrl.Result{}
	case s.err != nil:
		return health{reconciling: true, reason: "ReconcileFailed", message: s.err.Error()}, stateError, ctrl.Result{}
	case !s.running:
		return health{ready: true, reason: "Detached", message: "the volume has no engine; the replica process is stopped and its data kept"}, stateStopped, ctrl.Result{}
	case s.serving && s.size != s.obj.Spec.Size.Value():
		return health{ready: true, reconciling: true, reason: "ResizePending", message: fmt.Sprintf("the replica serves on %s with its original size %d bytes; resizing to %s is not supported by the replica yet", s.address, s.size, s.obj.Spec.Size.String())}, stateRunning, ctrl.Result{}
	case s.serving:
		return health{ready: true, reason: "Running", message: "the replica serves on " + s.address}, stateRunning, ctrl.Result{}
	case !s.proc.Running && s.proc.LastExit != "":
		return health{reconciling: true, reason: "ProcessExited", message: "the replica process exited (" + s.proc.LastExit + "); restarting with backoff"}, stateError, ctrl.Result{}
	}
	return health{reconciling: true, reason: "Starting", message: "waiting for the replica process to listen on " + s.address}, stateStarting, ctrl.Result{RequeueAfter: startingPoll}
}
