package dr

import (
	"errors"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// outcome is what a reconcile concluded, turned into kstatus conditions by
// setConditions.
type outcome struct {
	ready   bool
	stalled bool
	reason  string
	message string
}

// finishStatus turns the phases' outcome and error into conditions.
func (r *Reconciler) finishStatus(s *scope, err error) {
	o := s.out
	switch {
	case o.stalled:
	case err != nil && errors.Is(err, reconcile.TerminalError(nil)):
		o = outcome{stalled: true, reason: "Failed", message: err.Error()}
	case err != nil:
		o = outcome{reason: "ReconcileError", message: err.Error()}
	case o.reason == "":
		o = outcome{reason: "Reconciling", message: "reconciling"}
	}
	if o.stalled && s.drv.Status.Phase != v1.DRActive {
		s.drv.Status.Phase = v1.DRFailed
	}
	setConditions(&s.drv.Status, s.drv.Generation, o)
}

// setConditions writes Ready, and Reconciling or Stalled (present only while
// true), and advances observedGeneration when the outcome is final.
func setConditions(st *v1.DisasterRecoveryVolumeStatus, generation int64, o outcome) {
	cond := func(t string, s metav1.ConditionStatus) metav1.Condition {
		return metav1.Condition{Type: t, Status: s, Reason: o.reason, Message: o.message, ObservedGeneration: generation}
	}
	ready := metav1.ConditionFalse
	if o.ready {
		ready = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&st.Conditions, cond(v1.ConditionReady, ready))
	switch {
	case o.stalled:
		meta.RemoveStatusCondition(&st.Conditions, v1.ConditionReconciling)
		meta.SetStatusCondition(&st.Conditions, cond(v1.ConditionStalled, metav1.ConditionTrue))
	case o.ready:
		meta.RemoveStatusCondition(&st.Conditions, v1.ConditionReconciling)
		meta.RemoveStatusCondition(&st.Conditions, v1.ConditionStalled)
	default:
		meta.RemoveStatusCondition(&st.Conditions, v1.ConditionStalled)
		meta.SetStatusCondition(&st.Conditions, cond(v1.ConditionReconciling, metav1.ConditionTrue))
	}
	if o.ready || o.stalled {
		st.ObservedGeneration = generation
	}
}
