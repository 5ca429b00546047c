package scheduler

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/policies"
)

// maxResults is how many results status.recentResults holds (its API bound).
const maxResults = 20

// maxMessage is the longest RunResult message (its API bound).
const maxMessage = 1024

// outcome is what a reconcile concluded, turned into kstatus conditions by
// setConditions.
type outcome struct {
	// stalled: a user must change something; reason and message say what.
	stalled bool
	reason  string
	message string
}

// setConditions writes Ready, and Reconciling or Stalled (present only while
// true). ready says the schedule is running as specified; observedGeneration
// advances only then or when stalled.
func setConditions(st *v1.RecurringSnapshotStatus, generation int64, ready bool, o outcome) {
	cond := func(t string, s metav1.ConditionStatus) metav1.Condition {
		return metav1.Condition{Type: t, Status: s, Reason: o.reason, Message: o.message, ObservedGeneration: generation}
	}
	readyStatus := metav1.ConditionFalse
	if ready {
		readyStatus = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&st.Conditions, cond(v1.ConditionReady, readyStatus))
	switch {
	case o.stalled:
		meta.RemoveStatusCondition(&st.Conditions, v1.ConditionReconciling)
		meta.SetStatusCondition(&st.Conditions, cond(v1.ConditionStalled, metav1.ConditionTrue))
	case ready:
		meta.RemoveStatusCondition(&st.Conditions, v1.ConditionReconciling)
		meta.RemoveStatusCondition(&st.Conditions, v1.ConditionStalled)
	default:
		meta.RemoveStatusCondition(&st.Conditions, v1.ConditionStalled)
		meta.SetStatusCondition(&st.Conditions, cond(v1.ConditionReconciling, metav1.ConditionTrue))
	}
	if ready || o.stalled {
		st.ObservedGeneration = generation
	}
}

// conditionSuspended is True while spec.suspend is set, and False (its
// lastTransitionTime the moment of resuming, on the scheduler's clock) once
// a suspended schedule resumed; absent on a schedule never suspended.
const conditionSuspended = "Suspended"

// trackSuspension keeps the Suspended condition and returns when the
// schedule last resumed (zero while suspended or if never suspended).
func trackSuspension(st *v1.RecurringSnapshotStatus, suspend bool, now time.Time, generation int64) time.Time {
	c := metav1.Condition{Type: conditionSuspended, Status: metav1.ConditionTrue, Reason: "Suspended",
		Message: "spec.suspend is true: no new runs start", ObservedGeneration: generation, LastTransitionTime: metav1.NewTime(now.Truncate(time.Second))}
	if !suspend {
		if meta.FindStatusCondition(st.Conditions, conditionSuspended) == nil {
			return time.Time{}
		}
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, "Resumed", "runs that came due while suspended are not replayed"
	}
	meta.SetStatusCondition(&st.Conditions, c)
	if suspend {
		return time.Time{}
	}
	return meta.FindStatusCondition(st.Conditions, conditionSuspended).LastTransitionTime.Time
}

// finishStatus writes what the phases found: the counts, times and results
// (as far as they got) and the conditions.
func (r *Reconciler) finishStatus(ctx context.Context, s *scope, orig *v1.RecurringSnapshot, err error) {
	st := &s.rs.Status
	if s.objs != nil {
		st.VolumeCount = int32(len(s.list))
		st.NextScheduleTime = nil
		if !s.rs.Spec.Suspend {
			st.NextScheduleTime = timePtr(s.nextRun())
		}
		st.RecentResults = mergeResults(st.RecentResults, append(s.objectResults(), s.fresh...))
		r.advanceSuccess(ctx, s, orig)
	}
	switch {
	case s.out.stalled:
		setConditions(st, s.rs.Generation, false, s.out)
	case err != nil:
		setConditions(st, s.rs.Generation, false, outcome{reason: "ReconcileError", message: err.Error()})
	default:
		setConditions(st, s.rs.Generation, true, readyOutcome(s))
	}
}

// readyOutcome says what the running schedule is doing.
func readyOutcome(s *scope) outcome {
	if s.rs.Spec.Suspend {
		return outcome{reason: "Suspended", message: fmt.Sprintf("suspended: no new runs on its %d volumes", len(s.list))}
	}
	return outcome{reason: "Scheduled", message: fmt.Sprintf("%d volumes; next run %s", len(s.list), stamp(s.nextRun()))}
}

// objectResults are the outcomes of the schedule's finished objects.
func (s *scope) objectResults() []v1.RunResult {
	var out []v1.RunResult
	for i := range s.objs.all {
		o := &s.objs.all[i]
		if o.state == inFlight {
			continue
		}
		res := v1.RunResult{Volume: o.volume, ScheduledTime: metaTime(volumeStart(&s.rs.Spec, s.rs.Name, o.volume, o.run)),
			Succeeded: o.state == done, Message: o.kind + " " + o.obj.GetName()}
		if o.state == failed {
			res.Message += " failed: " + o.message
		}
		out = append(out, res)
	}
	return out
}

// mergeResults adds fresh results to old ones (a fresh result replaces an
// old one for the same volume and time) and keeps the newest maxResults,
// newest first, equal times by volume.
func mergeResults(old, fresh []v1.RunResult) []v1.RunResult {
	type key struct {
		volume string
		at     int64
	}
	seen := map[key]bool{}
	var out []v1.RunResult
	for _, r := range slices.Concat(fresh, old) {
		k := key{r.Volume, r.ScheduledTime.Unix()}
		if seen[k] {
			continue
		}
		seen[k] = true
		r.ScheduledTime = metav1.NewTime(r.ScheduledTime.Truncate(time.Second))
		r.Message = truncate(r.Message, maxMessage)
		out = append(out, r)
	}
	slices.SortStableFunc(out, func(a, b v1.RunResult) int {
		return cmp.Or(b.ScheduledTime.Compare(a.ScheduledTime.Time), cmp.Compare(a.Volume, b.Volume))
	})
	return out[:min(len(out), maxResults)]
}

// advanceSuccess moves lastSuccessfulTime to the newest run that completed
// on every volume, and reports it.
func (r *Reconciler) advanceSuccess(ctx context.Context, s *scope, orig *v1.RecurringSnapshot) {
	st := &s.rs.Status
	var prev time.Time
	if st.LastSuccessfulTime != nil {
		prev = st.LastSuccessfulTime.Time
	}
	// A run applies to the volumes that existed at their start, inside the windows.
	run, n := lastSuccess(prev, s.objs.all, s.list, func(t target, run time.Time) bool {
		start := volumeStart(&s.rs.Spec, s.rs.Name, t.name, run)
		return !t.created.After(start) && policies.InWindow(s.rs.Spec.Windows, start, s.sched.Location())
	})
	if run.IsZero() {
		return
	}
	st.LastSuccessfulTime = timePtr(run)
	if orig.Status.LastSuccessfulTime == nil || !orig.Status.LastSuccessfulTime.Time.Equal(run) {
		log.FromContext(ctx).Info("Run completed on every volume", "run", run.UTC(), "volumes", n)
		s.committed = append(s.committed, func() {
			r.normal(s.rs, "RunSucceeded", "run %s completed on all %d volumes", stamp(run), n)
		})
	}
}

// lastSuccess returns the newest run after prev whose objects are done on
// every target the run applies to (at least one), and that count; zero
// when there is none.
func lastSuccess(prev time.Time, objs []runObject, targets []target, appliesTo func(target, time.Time) bool) (time.Time, int) {
	doneAt := map[int64]map[string]bool{}
	for i := range objs {
		o := &objs[i]
		if o.run.After(prev) && o.state == done {
			if doneAt[o.run.Unix()] == nil {
				doneAt[o.run.Unix()] = map[string]bool{}
			}
			doneAt[o.run.Unix()][o.volume] = true
		}
	}
	var best time.Time
	count := 0
	for at, vols := range doneAt {
		run := time.Unix(at, 0).UTC()
		n, ok := 0, true
		for _, t := range targets {
			if appliesTo(t, run) {
				n++
				ok = ok && vols[t.name]
			}
		}
		if ok && n > 0 && run.After(best) {
			best, count = run, n
		}
	}
	return best, count
}

// report reports each failed object once: a warning event, and
// v1.AnnotationRunReported on the object so later reconciles know.
func (r *Reconciler) report(ctx context.Context, s *scope) (ctrl.Result, error) {
	for i := range s.objs.all {
		o := &s.objs.all[i]
		if o.state != failed || o.deleting() || o.obj.GetAnnotations()[v1.AnnotationRunReported] == reportedFailed {
			continue
		}
		patch := client.MergeFrom(o.obj.DeepCopyObject().(client.Object))
		ann := o.obj.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		ann[v1.AnnotationRunReported] = reportedFailed
		o.obj.SetAnnotations(ann)
		if err := r.Patch(ctx, o.obj, patch); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return ctrl.Result{}, fmt.Errorf("mark %s %s reported: %w", o.kind, o.obj.GetName(), err)
		}
		log.FromContext(ctx).Info("Run failed", "kind", o.kind, "name", o.obj.GetName(), "volume", o.volume, "run", o.run.UTC(), "reason", o.message)
		r.warn(s.rs, "RunFailed", "%s %s of volume %s (run %s) failed: %s", o.kind, o.obj.GetName(), o.volume, stamp(o.run), o.message)
	}
	return ctrl.Result{}, nil
}

func (r *Reconciler) normal(rs *v1.RecurringSnapshot, reason, format string, args ...any) {
	r.Recorder.Eventf(rs, nil, corev1.EventTypeNormal, reason, "Schedule", format, args...)
}

func (r *Reconciler) warn(rs *v1.RecurringSnapshot, reason, format string, args ...any) {
	r.Recorder.Eventf(rs, nil, corev1.EventTypeWarning, reason, "Schedule", format, args...)
}

// stamp formats a time for messages: RFC 3339 in UTC.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// list names up to ten items for a message.
func list(names []string) string {
	const show = 10
	if len(names) <= show {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:show], ", "), len(names)-show)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n-3], "") + "..."
}

func timePtr(t time.Time) *metav1.Time {
	mt := metav1.NewTime(t)
	return &mt
}

func metaTime(t time.Time) metav1.Time { return metav1.NewTime(t) }
