package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// observe reports the replicas, robustness, attachment and endpoint.
func (r *VolumeReconciler) observe(_ context.Context, s *volumeScope) (ctrl.Result, error) {
	st := &s.vol.Status
	st.Replicas = st.Replicas[:0]
	healthy := 0
	for i := range s.replicas {
		rep := &s.replicas[i]
		if !rep.DeletionTimestamp.IsZero() {
			continue
		}
		mode := apiMode(s.replicaMode(rep))
		if s.engine == nil {
			mode = detachedMode(rep, s.nodes[rep.Spec.NodeID])
		}
		if mode == modeRW {
			healthy++
		}
		st.Replicas = append(st.Replicas, v1.VolumeReplicaStatus{Name: rep.Name, Node: rep.Spec.NodeID, Mode: mode})
	}
	st.Robustness = robustness(healthy, int(s.eff.Replicas))
	st.State, st.AttachedNode, st.Endpoint = attachment(s)
	if st.State == v1.VolumeAttached {
		q := s.vol.Spec.Size
		st.ActualSize = &q
	}
	recordVolume(s.vol)
	return ctrl.Result{}, nil
}

// Replica modes as Volume.status reports them.
const (
	modeRW      = "RW"
	modeWO      = "WO"
	modeERR     = "ERR"
	modeUnknown = "Unknown"
)

// apiMode maps the engine's replica mode to the API's.
func apiMode(engineMode string) string {
	switch engineMode {
	case "healthy":
		return modeRW
	case "rebuilding", "resyncing":
		return modeWO
	case "":
		return modeUnknown
	}
	return modeERR
}

// detachedMode is a replica's mode with no engine to ask: RW when its node
// is ready and its agent has set it up, else Unknown.
func detachedMode(rep *v1.Replica, node *v1.CairnNode) string {
	if node == nil || !isReady(node) || rep.Status.Address == "" {
		return modeUnknown
	}
	return modeRW
}

func robustness(healthy, want int) v1.Robustness {
	switch {
	case healthy == 0:
		return v1.RobustnessFaulted
	case healthy < want:
		return v1.RobustnessDegraded
	}
	return v1.RobustnessHealthy
}

// attachment is the volume's state, attached node and endpoint.
func attachment(s *volumeScope) (v1.VolumeState, string, string) {
	want := s.vol.Spec.NodeID
	if s.vol.Spec.Standby {
		want = ""
	}
	e := s.engine
	if e != nil && e.Spec.Frontend == frontendNone && e.DeletionTimestamp.IsZero() {
		e = nil // serves snapshots and backups; the volume is detached
	}
	switch {
	case e == nil && want == "":
		if len(s.replicas) == 0 {
			return v1.VolumePending, "", ""
		}
		return v1.VolumeDetached, "", ""
	case e == nil:
		return v1.VolumeAttaching, "", ""
	case !e.DeletionTimestamp.IsZero() || e.Spec.NodeID != want:
		return v1.VolumeDetaching, e.Spec.NodeID, ""
	case e.Status.State == "Running" && e.Status.Endpoint != "":
		return v1.VolumeAttached, e.Spec.NodeID, e.Status.Endpoint
	}
	return v1.VolumeAttaching, e.Spec.NodeID, ""
}

// finishStatus turns what the phases found into kstatus conditions: Ready
// when every replica is healthy and the attachment matches spec.nodeID.
func (s *volumeScope) finishStatus(err error) {
	st := &s.vol.Status
	o := s.out
	switch {
	case o.stalled:
	case err != nil:
		o = outcome{reason: "ReconcileError", message: err.Error()}
	case s.restoring():
		c := meta.FindStatusCondition(st.Conditions, v1.ConditionRestored)
		o = outcome{reason: c.Reason, message: c.Message}
	case st.Robustness != v1.RobustnessHealthy || len(st.Replicas) != int(s.eff.Replicas):
		o = outcome{reason: "Replicating", message: fmt.Sprintf("%d of %d replicas healthy", countHealthy(st.Replicas), s.eff.Replicas)}
	case st.State == v1.VolumeAttaching || st.State == v1.VolumeDetaching:
		o = outcome{reason: string(st.State), message: fmt.Sprintf("volume is %s", st.State)}
	case s.engineWorking() != nil:
		c := s.engineWorking()
		o = outcome{reason: c.Reason, message: "engine: " + c.Message}
	default:
		o = outcome{ready: true, reason: string(st.State), message: fmt.Sprintf("%d healthy replicas, %s", len(st.Replicas), st.State)}
	}
	setConditions(&st.Conditions, &st.ObservedGeneration, s.vol.Generation, o)
}

// engineWorking is the engine's Reconciling condition while it is true
// (growing, rebuilding, changing members), else nil.
func (s *volumeScope) engineWorking() *metav1.Condition {
	if s.engine == nil {
		return nil
	}
	c := meta.FindStatusCondition(s.engine.Status.Conditions, v1.ConditionReconciling)
	if c == nil || c.Status != metav1.ConditionTrue {
		return nil
	}
	return c
}

func countHealthy(reps []v1.VolumeReplicaStatus) int {
	n := 0
	for _, r := range reps {
		if r.Mode == modeRW {
			n++
		}
	}
	return n
}
