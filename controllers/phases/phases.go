// Package phases runs a reconcile as a slice of phases, each doing one
// thing to a scope the reconcile owns: they run in order, the first error
// or stall stops them, and their requeues combine into the soonest one
// asked for (Flux source-controller's reconcile, Cluster API's
// doReconcile).
package phases

import (
	"context"

	ctrl "sigs.k8s.io/controller-runtime"
)

// Phase is one step of a reconcile on scope S.
type Phase[S any] func(context.Context, S) (ctrl.Result, error)

// Run runs phases in order on s, stopping at the first error or once
// stalled(s) is true, and returns the soonest requeue any of them asked for.
func Run[S any](ctx context.Context, s S, stalled func(S) bool, phases ...Phase[S]) (ctrl.Result, error) {
	var res ctrl.Result
	for _, p := range phases {
		r, err := p(ctx, s)
		res = Soonest(res, r)
		if err != nil || stalled(s) {
			return res, err
		}
	}
	return res, nil
}

// Soonest combines two results: the one with the shorter non-zero
// RequeueAfter, else a.
func Soonest(a, b ctrl.Result) ctrl.Result {
	if b.RequeueAfter > 0 && (a.RequeueAfter == 0 || b.RequeueAfter < a.RequeueAfter) {
		return b
	}
	return a
}
