package node

import (
	"context"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// kstatus condition types.
const (
	condReady       = "Ready"
	condReconciling = "Reconciling"
	condStalled     = "Stalled"
)

// health is the outcome a status function derives from observations.
type health struct {
	ready       bool
	reconciling bool
	stalled     bool
	reason      string
	message     string
}

// applyHealth sets Ready (always), Reconciling and Stalled (only while
// true) and advances observedGeneration when the work is done or stalled.
func applyHealth(conds *[]metav1.Condition, observed *int64, gen int64, h health) {
	status := metav1.ConditionFalse
	if h.ready {
		status = metav1.ConditionTrue
	}
	apimeta.SetStatusCondition(conds, metav1.Condition{Type: condReady, Status: status, Reason: h.reason, Message: h.message, ObservedGeneration: gen})
	setAbnormal(conds, condReconciling, h.reconciling, h.reason, h.message, gen)
	setAbnormal(conds, condStalled, h.stalled, h.reason, h.message, gen)
	if h.ready || h.stalled {
		*observed = gen
	}
}

// setAbnormal sets an abnormal-true condition while on, removes it otherwise.
func setAbnormal(conds *[]metav1.Condition, typ string, on bool, reason, msg string, gen int64) {
	if !on {
		apimeta.RemoveStatusCondition(conds, typ)
		return
	}
	apimeta.SetStatusCondition(conds, metav1.Condition{Type: typ, Status: metav1.ConditionTrue, Reason: reason, Message: msg, ObservedGeneration: gen})
}

// statusPatcher patches an object's status from a snapshot taken when it
// was read: one merge patch per reconcile.
type statusPatcher struct {
	c      client.Client
	before client.Object
}

func newStatusPatcher(c client.Client, obj client.Object) *statusPatcher {
	return &statusPatcher{c: c, before: obj.DeepCopyObject().(client.Object)}
}

// patch sends the status difference, if any (nothing when unchanged).
func (p *statusPatcher) patch(ctx context.Context, obj client.Object) error {
	patch := client.MergeFrom(p.before)
	data, err := patch.Data(obj)
	if err != nil {
		return err
	}
	if string(data) == "{}" {
		return nil
	}
	return client.IgnoreNotFound(p.c.Status().Patch(ctx, obj, patch))
}
