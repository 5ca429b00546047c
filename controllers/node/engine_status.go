package node

import (
	"errors"
	"fmt"
	"strings"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cairnstore/cairn/engine"
)

// setEngineStatus derives the Engine's status from one reconcile's
// observations and says when to look again (a running engine is polled).
func setEngineStatus(s *engineScope, poll time.Duration) ctrl.Result {
	st := &s.obj.Status
	st.PID, st.Restarts = int32(s.proc.PID), int32(s.proc.Restarts)
	st.Endpoint = s.endpoint
	if s.status != nil {
		st.ReplicaModes = map[string]string{}
		for _, m := range s.status.Replicas {
			st.ReplicaModes[m.Address] = string(m.Mode)
		}
		st.Robustness = string(s.status.Robustness)
		st.RebuildProgress = rebuildProgress(s.status)
	}
	h, state, res := engineHealth(s, poll)
	st.State = state
	applyHealth(&st.Conditions, &st.ObservedGeneration, s.obj.Generation, h)
	return res
}

// engineHealth is the pure part of setEngineStatus.
func engineHealth(s *engineScope, poll time.Duration) (health, string, ctrl.Result) {
	switch {
	case errors.Is(s.err, reconcile.TerminalError(nil)):
		return health{stalled: true, reason: "InvalidSpec", message: errors.Unwrap(s.err).Error()}, stateError, ctrl.Result{}
	case errors.Is(s.err, errNoToken):
		return health{reconciling: true, reason: "WaitingForToken", message: s.err.Error()}, stateStarting, ctrl.Result{}
	case s.waiting != "":
		return health{reconciling: true, reason: "WaitingForReplicas", message: s.waiting}, stateStarting, ctrl.Result{}
	case s.running && !s.proc.Running && s.proc.LastExit != "":
		return health{reconciling: true, reason: "ProcessExited", message: "the engine process exited (" + s.proc.LastExit + "); restarting with backoff"}, stateError, ctrl.Result{}
	case s.err != nil:
		return health{reconciling: true, reason: "ReconcileFailed", message: s.err.Error()}, stateError, ctrl.Result{}
	case s.status == nil || s.endpoint == "" && s.frontend != frontendNone:
		return health{reconciling: true, reason: "Starting", message: "waiting for the engine to open the volume"}, stateStarting, ctrl.Result{}
	case s.memberErr != nil:
		return health{ready: true, reconciling: true, reason: "ReplicaChangePending", message: s.memberErr.Error()}, stateRunning, ctrl.Result{}
	case s.status.Size < s.obj.Spec.Size.Value():
		return health{ready: true, reconciling: true, reason: "Growing", message: fmt.Sprintf("the engine serves %d bytes, growing to %s", s.status.Size, s.obj.Spec.Size.String())}, stateRunning, ctrl.Result{RequeueAfter: min(poll, time.Second)}
	case len(s.pending) > 0 || s.obj.Status.RebuildProgress > 0 || rebuilding(s.status):
		return health{ready: true, reconciling: true, reason: "Rebuilding", message: membersMessage(s)}, stateRunning, ctrl.Result{RequeueAfter: min(poll, time.Second)}
	}
	if s.frontend == frontendNone {
		return health{ready: true, reason: "Running", message: fmt.Sprintf("volume open without a frontend, for snapshots and backups (%s)", s.status.Robustness)}, stateRunning, ctrl.Result{RequeueAfter: poll}
	}
	return health{ready: true, reason: "Running", message: fmt.Sprintf("volume served on %s (%s)", s.endpoint, s.status.Robustness)}, stateRunning, ctrl.Result{RequeueAfter: poll}
}

// rebuildProgress is the percentage copied of the running rebuilds.
func rebuildProgress(st *engine.Status) int32 {
	var copied, total int64
	for _, m := range st.Replicas {
		copied += m.RebuildCopied
		total += m.RebuildTotal
	}
	if total == 0 {
		return 0
	}
	return int32(min(100, copied*100/total))
}

func rebuilding(st *engine.Status) bool {
	for _, m := range st.Replicas {
		if m.Mode == engine.ModeRebuilding || m.Mode == engine.ModeResyncing {
			return true
		}
	}
	return false
}

func membersMessage(s *engineScope) string {
	if len(s.pending) > 0 {
		return "changing replicas: " + strings.Join(s.pending, ", ")
	}
	return fmt.Sprintf("rebuilding replicas (%d%%)", s.obj.Status.RebuildProgress)
}
