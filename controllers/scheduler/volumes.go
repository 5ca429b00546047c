package scheduler

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// loadVolumes finds the volumes the schedule applies to: those its
// selector matches and those whose effective policy lists it, except
// standby volumes and volumes being deleted.
func (r *Reconciler) loadVolumes(ctx context.Context, s *scope) (ctrl.Result, error) {
	sel, err := selector(s.rs.Spec.Selector)
	if err != nil {
		s.out = outcome{stalled: true, reason: "InvalidSelector", message: err.Error()}
		return ctrl.Result{}, reconcile.TerminalError(err)
	}
	var pols v1.VolumePolicyList
	if err := r.List(ctx, &pols); err != nil {
		return ctrl.Result{}, err
	}
	var vols v1.VolumeList
	if err := r.List(ctx, &vols); err != nil {
		return ctrl.Result{}, err
	}
	s.volumes = vols.Items
	s.targets = map[string]*v1.Volume{}
	byPolicy := policiesListing(s.rs.Name, pols.Items)
	for i := range vols.Items {
		vol := &vols.Items[i]
		if applies(vol, sel, byPolicy) {
			s.targets[vol.Name] = vol
			s.list = append(s.list, target{name: vol.Name, created: vol.CreationTimestamp.Time})
		}
	}
	slices.SortFunc(s.list, func(a, b target) int { return cmp.Compare(a.name, b.name) })
	recordRPO(s)
	return ctrl.Result{}, nil
}

// recordRPO gives every volume of a backup schedule its recovery point.
func recordRPO(s *scope) {
	refs := map[string]time.Time{}
	if s.rs.Spec.Action == v1.ActionBackup {
		for name, vol := range s.targets {
			refs[name] = recoveryPoint(vol, s.rs)
		}
	}
	rpo.set(s.rs.Name, refs)
}

// selector converts spec.selector; nil selects no volume.
func selector(ls *metav1.LabelSelector) (labels.Selector, error) {
	if ls == nil {
		return labels.Nothing(), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, fmt.Errorf("invalid selector: %w", err)
	}
	return sel, nil
}

// policiesListing is the set of policies whose recurringSnapshots name the schedule.
func policiesListing(schedule string, pols []v1.VolumePolicy) map[string]bool {
	out := map[string]bool{}
	for _, p := range pols {
		if slices.Contains(p.Spec.RecurringSnapshots, v1.ObjectName(schedule)) {
			out[p.Name] = true
		}
	}
	return out
}

// applies reports whether a schedule with selector sel, listed by the
// policies in byPolicy, applies to vol.
func applies(vol *v1.Volume, sel labels.Selector, byPolicy map[string]bool) bool {
	if vol.Spec.Standby || !vol.DeletionTimestamp.IsZero() {
		return false
	}
	return sel.Matches(labels.Set(vol.Labels)) || byPolicy[vol.Status.EffectivePolicy]
}
