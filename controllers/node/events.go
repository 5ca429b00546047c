package node

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// +kubebuilder:rbac:groups=core,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// replicaEvents records what changed for users between two statuses.
func replicaEvents(rec recorder.EventRecorder, obj *cairnv1.Replica, before cairnv1.ReplicaStatus) {
	if rec == nil {
		return
	}
	st := obj.Status
	if st.Restarts > before.Restarts {
		rec.Eventf(obj, nil, corev1.EventTypeWarning, "Restarted", "Restart", "replica process restarted after it exited (restart %d)", st.Restarts)
	}
	if st.State == before.State {
		return
	}
	switch st.State {
	case stateRunning:
		rec.Eventf(obj, nil, corev1.EventTypeNormal, "Running", "Start", "replica serving on %s (pid %d)", st.Address, st.PID)
	case stateStopped:
		if before.State != "" {
			rec.Eventf(obj, nil, corev1.EventTypeNormal, "Stopped", "Stop", "volume detached: replica process stopped, data kept")
		}
	case stateError:
		rec.Eventf(obj, nil, corev1.EventTypeWarning, reasonOf(st.Conditions), "Start", "%s", messageOf(st.Conditions))
	}
}

// engineEvents records what changed for users between two statuses.
func engineEvents(rec recorder.EventRecorder, obj *cairnv1.Engine, before cairnv1.EngineStatus) {
	if rec == nil {
		return
	}
	st := obj.Status
	if st.Restarts > before.Restarts {
		rec.Eventf(obj, nil, corev1.EventTypeWarning, "Restarted", "Restart", "engine process restarted after it exited (restart %d)", st.Restarts)
	}
	if st.Endpoint != "" && st.Endpoint != before.Endpoint {
		rec.Eventf(obj, nil, corev1.EventTypeNormal, "Attached", "Attach", "volume exposed as %s", st.Endpoint)
	}
	if st.State != before.State && st.State == stateError {
		rec.Eventf(obj, nil, corev1.EventTypeWarning, reasonOf(st.Conditions), "Start", "%s", messageOf(st.Conditions))
	}
}

func reasonOf(conds []metav1.Condition) string {
	for _, c := range conds {
		if c.Type == condReady {
			return c.Reason
		}
	}
	return "Error"
}

func messageOf(conds []metav1.Condition) string {
	for _, c := range conds {
		if c.Type == condReady {
			return c.Message
		}
	}
	return ""
}
