package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// outcome is what a reconcile concluded about an object, turned into the
// kstatus conditions by setConditions.
type outcome struct {
	// ready: the desired state is reached.
	ready bool
	// stalled: a user must change something; reason and message say what.
	stalled bool
	reason  string
	message string
}

// setConditions writes Ready, and Reconciling or Stalled (present only while
// true), and advances observedGeneration when the result is final (ready or
// stalled). Every condition carries a reason and a message.
func setConditions(conds *[]metav1.Condition, observed *int64, generation int64, o outcome) {
	ready := metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: o.reason, Message: o.message, ObservedGeneration: generation}
	if o.ready {
		ready.Status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(conds, ready)
	switch {
	case o.stalled:
		meta.RemoveStatusCondition(conds, v1.ConditionReconciling)
		meta.SetStatusCondition(conds, metav1.Condition{Type: v1.ConditionStalled, Status: metav1.ConditionTrue, Reason: o.reason, Message: o.message, ObservedGeneration: generation})
	case o.ready:
		meta.RemoveStatusCondition(conds, v1.ConditionReconciling)
		meta.RemoveStatusCondition(conds, v1.ConditionStalled)
	default:
		meta.RemoveStatusCondition(conds, v1.ConditionStalled)
		meta.SetStatusCondition(conds, metav1.Condition{Type: v1.ConditionReconciling, Status: metav1.ConditionTrue, Reason: o.reason, Message: o.message, ObservedGeneration: generation})
	}
	if o.ready || o.stalled {
		*observed = generation
	}
}

// setFlag sets an extra condition of type t when on, removes it otherwise.
func setFlag(conds *[]metav1.Condition, t string, on bool, reason, message string, generation int64) {
	if !on {
		meta.RemoveStatusCondition(conds, t)
		return
	}
	meta.SetStatusCondition(conds, metav1.Condition{Type: t, Status: metav1.ConditionTrue, Reason: reason, Message: message, ObservedGeneration: generation})
}
