package scheduler

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/phases"
	"github.com/cairnstore/cairn/policies"
)

func TestSetConditions(t *testing.T) {
	cases := []struct {
		name           string
		ready          bool
		out            outcome
		want           map[string]metav1.ConditionStatus
		wantObservedGe int64
	}{
		{"ready", true, outcome{reason: "Scheduled", message: "2 volumes"},
			map[string]metav1.ConditionStatus{v1.ConditionReady: metav1.ConditionTrue}, 3},
		{"invalid schedule stalls", false, outcome{stalled: true, reason: "InvalidSchedule", message: "bad"},
			map[string]metav1.ConditionStatus{v1.ConditionReady: metav1.ConditionFalse, v1.ConditionStalled: metav1.ConditionTrue}, 3},
		{"transient error reconciles", false, outcome{reason: "ReconcileError", message: "boom"},
			map[string]metav1.ConditionStatus{v1.ConditionReady: metav1.ConditionFalse, v1.ConditionReconciling: metav1.ConditionTrue}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Start from the opposite state so stale conditions must go.
			st := v1.RecurringSnapshotStatus{ObservedGeneration: 1, Conditions: []metav1.Condition{
				{Type: v1.ConditionStalled, Status: metav1.ConditionTrue, Reason: "Old", Message: "old"},
				{Type: v1.ConditionReconciling, Status: metav1.ConditionTrue, Reason: "Old", Message: "old"},
			}}
			setConditions(&st, 3, c.ready, c.out)
			got := map[string]metav1.ConditionStatus{}
			for _, cond := range st.Conditions {
				got[cond.Type] = cond.Status
				require.Equal(t, c.out.reason, cond.Reason)
				require.Equal(t, c.out.message, cond.Message)
				require.Equal(t, int64(3), cond.ObservedGeneration)
			}
			require.Equal(t, c.want, got)
			require.Equal(t, c.wantObservedGe, st.ObservedGeneration)
		})
	}
}

func TestMergeResults(t *testing.T) {
	base := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	res := func(vol string, minutes int, ok bool, msg string) v1.RunResult {
		return v1.RunResult{Volume: vol, ScheduledTime: metav1.NewTime(base.Add(time.Duration(minutes) * time.Minute)), Succeeded: ok, Message: msg}
	}
	old := []v1.RunResult{res("a", 0, false, "skipped"), res("b", 0, true, "old")}
	fresh := []v1.RunResult{res("b", 0, false, "Snapshot x failed: disk"), res("a", 60, true, "")}
	require.Equal(t, []v1.RunResult{res("a", 60, true, ""), res("a", 0, false, "skipped"), res("b", 0, false, "Snapshot x failed: disk")},
		mergeResults(old, fresh), "a fresh result replaces the old one of the same volume and time; newest first")

	var many []v1.RunResult
	for i := range 30 {
		many = append(many, res(fmt.Sprintf("v%02d", i), 0, true, ""))
	}
	got := mergeResults(nil, many)
	require.Len(t, got, maxResults)
	require.Equal(t, "v00", got[0].Volume, "equal times by volume")
	require.Equal(t, got, mergeResults(got, many), "stable when nothing changed")
}

// obj builds a runObject for the pure retention and success tests.
func obj(kind, name, volume string, run time.Time, state objState) runObject {
	var o runObject
	if kind == "Backup" {
		o = runObject{obj: &v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: name}}, backupID: "id-" + name}
	} else {
		o = runObject{obj: &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: name}}}
	}
	o.kind, o.volume, o.run, o.state, o.completed = kind, volume, run, state, run.Add(time.Minute)
	return o
}

func TestLastSuccess(t *testing.T) {
	r1 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	r2 := r1.Add(time.Hour)
	targets := []target{{"a", r1.Add(-time.Hour)}, {"b", r1.Add(-time.Hour)}, {"c", r1.Add(30 * time.Minute)}}
	all := func(t target, run time.Time) bool { return !t.created.After(run) }
	objs := []runObject{
		obj("Snapshot", "a1", "a", r1, done), obj("Snapshot", "b1", "b", r1, done),
		obj("Snapshot", "a2", "a", r2, done), obj("Snapshot", "b2", "b", r2, inFlight), obj("Snapshot", "c2", "c", r2, done),
	}
	run, n := lastSuccess(time.Time{}, objs, targets, all)
	require.Equal(t, r1, run, "run 2 still has b in flight; c did not exist at run 1")
	require.Equal(t, 2, n)
	objs[3].state = done
	run, n = lastSuccess(time.Time{}, objs, targets, all)
	require.Equal(t, r2, run)
	require.Equal(t, 3, n)
	run, _ = lastSuccess(r2, objs, targets, all)
	require.True(t, run.IsZero(), "nothing newer than the last success")
	noB := func(t target, run time.Time) bool { return t.name != "b" && all(t, run) }
	objs[3].state = failed
	run, _ = lastSuccess(time.Time{}, objs, targets, noB)
	require.Equal(t, r2, run, "a volume whose start is outside the windows does not count")
}

func TestPruneSet(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(h int) time.Time { return start.Add(time.Duration(h) * time.Hour) }
	names := func(objs []*runObject) []string {
		var out []string
		for _, o := range objs {
			out = append(out, o.obj.GetName())
		}
		return out
	}
	var objs []runObject
	for h := range 6 {
		objs = append(objs, obj("Backup", fmt.Sprintf("a-%d", h), "a", at(h), done))
	}
	objs = append(objs,
		obj("Backup", "a-6", "a", at(6), inFlight),
		obj("Backup", "f-1", "a", at(1), failed), obj("Backup", "f-2", "a", at(2), failed), obj("Backup", "f-3", "a", at(3), failed),
		obj("Backup", "b-0", "b", at(0), done), obj("Snapshot", "a-0", "a", at(0), done),
	)
	noPins := func(*runObject) bool { return false }
	keep1 := v1.Retention{KeepLast: 1}

	require.Equal(t, []string{"a-4", "a-3", "a-2", "a-1", "a-0", "f-2", "f-1"}, names(pruneSet(objs, keep1, at(7), time.UTC, noPins)),
		"per kind and volume: keep the newest completed, the one in flight, and the newest failed")

	pinned := func(o *runObject) bool { return o.backupID == "id-a-1" || o.backupID == "id-f-1" }
	require.Equal(t, []string{"a-4", "a-3", "a-2", "a-0", "f-2"}, names(pruneSet(objs, keep1, at(7), time.UTC, pinned)), "pinned objects stay")

	maxAge := v1.Retention{KeepLast: 10, MaxAge: &metav1.Duration{Duration: time.Minute}}
	victims := names(pruneSet(objs, maxAge, at(100), time.UTC, noPins))
	require.NotContains(t, victims, "a-5", "maxAge never prunes the newest")
	require.NotContains(t, victims, "b-0")

	// What remains of the completed objects is exactly what policies.Retain keeps.
	gfs := v1.Retention{KeepLast: 2, Hourly: 4}
	var items []policies.Item
	for _, o := range objs[:6] {
		items = append(items, policies.Item{Name: o.obj.GetName(), Time: o.completed})
	}
	_, want := policies.Retain(items, gfs, at(7), time.UTC)
	got := pruneSet(objs, gfs, at(7), time.UTC, noPins)
	var completed []string
	for _, o := range got {
		if o.state == done {
			completed = append(completed, o.obj.GetName())
		}
	}
	require.Equal(t, want, completed)

	// Objects being deleted are left alone.
	now := metav1.Now()
	objs[0].obj.SetDeletionTimestamp(&now)
	require.NotContains(t, names(pruneSet(objs, keep1, at(7), time.UTC, noPins)), "a-0")
}

func TestReadFailures(t *testing.T) {
	stalled := &v1.Snapshot{Status: v1.SnapshotStatus{Conditions: []metav1.Condition{{Type: v1.ConditionStalled, Status: metav1.ConditionTrue, Message: "replica gone"}}}}
	require.Equal(t, failed, fromSnapshot(stalled).state)
	require.Equal(t, "replica gone", fromSnapshot(stalled).message)
	stalled.Status.ReadyToUse = true
	require.Equal(t, done, fromSnapshot(stalled).state, "ready wins")
	require.Equal(t, inFlight, fromSnapshot(&v1.Snapshot{}).state)

	b := &v1.Backup{Status: v1.BackupStatus{State: backupFailed}}
	require.Equal(t, "backup failed", fromBackup(b).message)
	meta.SetStatusCondition(&b.Status.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: "Failed", Message: "target unreachable"})
	require.Equal(t, "target unreachable", fromBackup(b).message)
	require.Equal(t, inFlight, fromBackup(&v1.Backup{Status: v1.BackupStatus{State: "InProgress"}}).state)
	require.Equal(t, done, fromBackup(&v1.Backup{Status: v1.BackupStatus{State: backupCompleted}}).state)
}

func TestTrackSuspension(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	var st v1.RecurringSnapshotStatus
	require.True(t, trackSuspension(&st, false, t0, 1).IsZero())
	require.Empty(t, st.Conditions, "a schedule never suspended has no Suspended condition")

	require.True(t, trackSuspension(&st, true, t0.Add(time.Minute), 2).IsZero())
	require.True(t, meta.IsStatusConditionTrue(st.Conditions, conditionSuspended))

	resumed := t0.Add(2*time.Hour + 500*time.Millisecond)
	require.Equal(t, t0.Add(2*time.Hour), trackSuspension(&st, false, resumed, 3), "the moment of resuming, to the second")
	require.Equal(t, t0.Add(2*time.Hour), trackSuspension(&st, false, resumed.Add(time.Hour), 3), "kept while resumed")
	c := meta.FindStatusCondition(st.Conditions, conditionSuspended)
	require.Equal(t, metav1.ConditionFalse, c.Status)
	require.Equal(t, "Resumed", c.Reason)
}

func TestInvalidScheduleStalls(t *testing.T) {
	for _, spec := range []v1.RecurringSnapshotSpec{
		{Schedule: "0 25 * * *"},
		{Schedule: "0 * * * *", TimeZone: "Mars/Olympus"},
	} {
		rs := &v1.RecurringSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "bad", Generation: 2}, Spec: spec}
		s := &scope{rs: rs, now: time.Now()}
		r := &Reconciler{}
		_, err := phases.Run(t.Context(), s, (*scope).isStalled, r.parse)
		require.ErrorIs(t, err, reconcile.TerminalError(nil), "no hot retry")
		r.finishStatus(t.Context(), s, rs.DeepCopy(), err)
		stalled := meta.FindStatusCondition(rs.Status.Conditions, v1.ConditionStalled)
		require.NotNil(t, stalled)
		require.Equal(t, "InvalidSchedule", stalled.Reason)
		_, parseErr := policies.ParseSchedule(spec.Schedule, spec.TimeZone)
		require.Equal(t, parseErr.Error(), stalled.Message)
		require.False(t, meta.IsStatusConditionTrue(rs.Status.Conditions, v1.ConditionReady))
		require.Equal(t, int64(2), rs.Status.ObservedGeneration)
	}
}
