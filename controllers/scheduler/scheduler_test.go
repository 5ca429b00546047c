package scheduler

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/policies"
)

func hourly(t *testing.T, tz string) *policies.Schedule {
	s, err := policies.ParseSchedule("0 * * * *", tz)
	require.NoError(t, err)
	return s
}

// firstRun is the schedule's first activation after its creation.
func firstRun(s *policies.Schedule, rs *v1.RecurringSnapshot) time.Time {
	return s.Next(rs.CreationTimestamp.Time)
}

func TestHourlySnapshotsWithJitter(t *testing.T) {
	h := newHarness(t, "hourly")
	labels, sel := h.selectAll()
	vols := []*v1.Volume{h.volume("a", labels), h.volume("b", labels)}
	jitter := 5 * time.Minute
	rs := h.schedule("snap", v1.RecurringSnapshotSpec{Schedule: "0 * * * *", Jitter: &metav1.Duration{Duration: jitter}, Selector: sel})
	t1 := firstRun(hourly(t, "UTC"), rs)
	st := h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) { assert.Equal(c, int32(2), st.VolumeCount) })
	require.True(t, st.NextScheduleTime.Time.Equal(t1))
	require.Nil(t, st.LastScheduleTime)
	require.True(t, condTrue(st, v1.ConditionReady))

	// The scheduled time alone starts nothing: each volume waits for its jitter.
	offset := func(v *v1.Volume) time.Duration { return policies.JitterOffset(v.Name, rs.Name, jitter) }
	slices.SortFunc(vols, func(a, b *v1.Volume) int { return int(offset(a) - offset(b)) })
	h.advance(t1, rs)
	h.waitRun(rs, t1)
	if offset(vols[0]) > 0 {
		require.Empty(t, h.snapshots(rs))
	}
	if offset(vols[0]) < offset(vols[1]) {
		h.advance(t1.Add(offset(vols[0])), rs)
		h.waitSnapshots(rs, 1)
		require.Len(t, h.snapshots(rs), 1, "the second volume's start is still ahead")
	}
	h.advance(t1.Add(jitter), rs)
	snaps := h.waitSnapshots(rs, 2)
	for _, vol := range vols {
		snap := snaps[objectName(rs.Name, vol.Name, t1, false)]
		require.NotNil(t, snap, "one Snapshot per volume, named for the run")
		require.Equal(t, vol.Name, snap.Spec.VolumeName)
		require.Equal(t, map[string]string{v1.LabelVolume: vol.Name, v1.LabelRecurringSnapshot: rs.Name}, snap.Labels)
		require.Equal(t, t1.UTC().Format(time.RFC3339), snap.Annotations[v1.AnnotationScheduledTime])
		require.Len(t, snap.OwnerReferences, 1)
		owner := snap.OwnerReferences[0]
		require.Equal(t, []any{"Volume", vol.Name, vol.UID, true}, []any{owner.Kind, owner.Name, owner.UID, *owner.Controller}, "owned by the volume only")
		h.completeSnapshot(snap.Name, t1.Add(offset(vol)))
	}
	st = h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) {
		assert.NotNil(c, st.LastSuccessfulTime)
		assert.Len(c, st.RecentResults, 2)
	})
	require.True(t, st.LastSuccessfulTime.Time.Equal(t1))
	for _, res := range st.RecentResults {
		require.True(t, res.Succeeded, res.Message)
	}
	require.True(t, st.RecentResults[0].ScheduledTime.After(st.RecentResults[1].ScheduledTime.Time) ||
		st.RecentResults[0].ScheduledTime.Equal(&st.RecentResults[1].ScheduledTime), "newest first")

	// The next run: again exactly one per volume.
	t2 := t1.Add(time.Hour)
	h.advance(t2.Add(jitter), rs)
	h.waitRun(rs, t2)
	snaps = h.waitSnapshots(rs, 4)
	for _, vol := range vols {
		require.Contains(t, snaps, objectName(rs.Name, vol.Name, t2, false))
		h.completeSnapshot(objectName(rs.Name, vol.Name, t2, false), t2.Add(offset(vol)))
	}
	st = h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) {
		assert.True(c, st.LastSuccessfulTime != nil && st.LastSuccessfulTime.Time.Equal(t2))
	})
	require.Len(t, h.snapshots(rs), 4, "completions reconcile the schedule without starting anything twice")
	require.True(t, st.NextScheduleTime.Time.Equal(t2.Add(time.Hour)))
	requireEvent(t, h, rs, "RunStarted")
	requireEvent(t, h, rs, "RunSucceeded")

	// GitOps: the scheduler wrote only status.
	cur := &v1.RecurringSnapshot{}
	require.NoError(t, k8s.Get(h.ctx, client.ObjectKeyFromObject(rs), cur))
	require.Equal(t, rs.Generation, cur.Generation)
	require.Equal(t, rs.Spec, cur.Spec)
	require.Empty(t, cur.Labels)
	require.Equal(t, []string{"test.cairn.dev/poke"}, mapKeys(cur.Annotations), "only the test's own annotation")
}

func TestDowntimeRunsOnceAndCountsMissed(t *testing.T) {
	h := newHarness(t, "downtime")
	labels, sel := h.selectAll()
	vol := h.volume("a", labels)
	rs := h.schedule("snap", v1.RecurringSnapshotSpec{Schedule: "0 * * * *", Selector: sel})
	t1 := firstRun(hourly(t, "UTC"), rs)
	h.advance(t1, rs)
	h.waitRun(rs, t1)
	h.completeSnapshot(objectName(rs.Name, vol.Name, t1, false), t1)

	// The scheduler keeps nothing but status and objects, so a manager that
	// was down is a scheduler that next looks three intervals later: the
	// runs at t1+1h and t1+2h were missed, t1+3h is due.
	t4 := t1.Add(3 * time.Hour)
	h.advance(t4.Add(30*time.Minute), rs)
	h.waitRun(rs, t4)
	snaps := h.waitSnapshots(rs, 2)
	require.Contains(t, snaps, objectName(rs.Name, vol.Name, t1, false))
	require.Contains(t, snaps, objectName(rs.Name, vol.Name, t4, false), "the latest missed run runs, once")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 2.0, missedCount(t, rs.Name))
	}, wait, 20*time.Millisecond)
	requireEvent(t, h, rs, "MissedRuns")
}

func TestConcurrencyOneNeverTwoInFlight(t *testing.T) {
	h := newHarness(t, "concurrency")
	labels, sel := h.selectAll()
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		h.volume(n, labels)
	}
	rs := h.schedule("snap", v1.RecurringSnapshotSpec{Schedule: "0 * * * *", Concurrency: 1, Selector: sel})
	t1 := firstRun(hourly(t, "UTC"), rs)

	// Watch every state the API server records for the schedule's snapshots.
	w, err := k8s.Watch(h.ctx, &v1.SnapshotList{}, client.MatchingLabels{v1.LabelRecurringSnapshot: rs.Name})
	require.NoError(t, err)
	var mu sync.Mutex
	maxInFlight, created := 0, 0
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		open := map[string]bool{}
		for ev := range w.ResultChan() {
			snap, ok := ev.Object.(*v1.Snapshot)
			if !ok {
				continue
			}
			st := fromSnapshot(snap).state
			mu.Lock()
			if ev.Type == watch.Added {
				created++
			}
			open[snap.Name] = ev.Type != watch.Deleted && st == inFlight
			maxInFlight = max(maxInFlight, countTrue(open))
			mu.Unlock()
		}
	}()

	h.advance(t1, rs)
	h.waitRun(rs, t1)
	finished := map[string]bool{}
	var violations [][]string
	for i := range 5 {
		var current string
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			var open []string
			for _, s := range h.snapshots(rs) {
				if fromSnapshot(&s).state == inFlight {
					open = append(open, s.Name)
				}
			}
			// Every state this loop observes must have at most one in flight.
			if len(open) > 1 {
				violations = append(violations, open)
			}
			if assert.Len(c, open, 1) {
				current = open[0]
			}
		}, wait, 20*time.Millisecond)
		require.Empty(t, violations, "never two in flight")
		require.False(t, finished[current])
		finished[current] = true
		if i == 2 {
			h.failSnapshot(current, "replica on node-2 lost")
		} else {
			h.completeSnapshot(current, t1)
		}
	}
	st := h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) { assert.Len(c, st.RecentResults, 5) })
	failures := 0
	for _, res := range st.RecentResults {
		if !res.Succeeded {
			failures++
			require.Contains(t, res.Message, "replica on node-2 lost")
		}
	}
	require.Equal(t, 1, failures)
	require.Nil(t, st.LastSuccessfulTime, "a run with a failure did not complete on every volume")
	requireEvent(t, h, rs, "RunFailed")

	w.Stop()
	<-watched
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, 5, created)
	require.Equal(t, 1, maxInFlight, "never two in flight")
}

func TestDenyWindowSkipsRun(t *testing.T) {
	h := newHarness(t, "window")
	labels, sel := h.selectAll()
	vol := h.volume("a", labels)
	sched := hourly(t, "Europe/Berlin")
	berlin := sched.Location()
	denyAt := func(t1 time.Time) []v1.TimeWindow {
		return []v1.TimeWindow{{Kind: v1.WindowDeny, Start: t1.In(berlin).Format("15:04"), End: t1.Add(30 * time.Minute).In(berlin).Format("15:04")}}
	}
	t1 := sched.Next(time.Now())
	rs := h.schedule("snap", v1.RecurringSnapshotSpec{Schedule: "0 * * * *", TimeZone: "Europe/Berlin", Windows: denyAt(t1), Selector: sel})
	if first := firstRun(sched, rs); !first.Equal(t1) {
		// An hour began while the schedule was created: move the window
		// to the schedule's real first run.
		t1 = first
		patch := client.MergeFrom(rs.DeepCopy())
		rs.Spec.Windows = denyAt(t1)
		require.NoError(t, k8s.Patch(h.ctx, rs, patch))
		h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) {
			assert.Equal(c, rs.Generation, st.ObservedGeneration)
		})
	}

	h.advance(t1.Add(time.Minute), rs)
	st := h.waitRun(rs, t1)
	st = h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) { assert.Len(c, st.RecentResults, 1) })
	res := st.RecentResults[0]
	require.Equal(t, vol.Name, res.Volume)
	require.False(t, res.Succeeded)
	require.Contains(t, res.Message, "skipped")
	require.Empty(t, h.snapshots(rs))
	requireEvent(t, h, rs, "RunSkipped")

	t2 := t1.Add(time.Hour)
	h.advance(t2, rs)
	h.waitRun(rs, t2)
	snaps := h.waitSnapshots(rs, 1)
	require.Contains(t, snaps, objectName(rs.Name, vol.Name, t2, false))
}

func TestSuspendStartsNothing(t *testing.T) {
	h := newHarness(t, "suspend")
	labels, sel := h.selectAll()
	vol := h.volume("a", labels)
	rs := h.schedule("snap", v1.RecurringSnapshotSpec{Schedule: "0 * * * *", Suspend: true, Selector: sel})
	t1 := firstRun(hourly(t, "UTC"), rs)
	st := h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) {
		assert.Equal(c, "Suspended", readyReason(st))
	})
	require.Nil(t, st.NextScheduleTime)

	// A suspended schedule passes its runs over.
	h.advance(t1.Add(10*time.Minute), rs)
	h.waitRun(rs, t1)
	require.Empty(t, h.snapshots(rs))

	// Resuming does not replay the passed-over run, nor count it as missed.
	cur := &v1.RecurringSnapshot{}
	require.NoError(t, k8s.Get(h.ctx, client.ObjectKeyFromObject(rs), cur))
	cur.Spec.Suspend = false
	require.NoError(t, k8s.Update(h.ctx, cur))
	t2 := t1.Add(time.Hour)
	st = h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) {
		assert.Equal(c, "Scheduled", readyReason(st))
		assert.Equal(c, cur.Generation, st.ObservedGeneration)
	})
	require.True(t, st.NextScheduleTime.Time.Equal(t2))
	require.Empty(t, h.snapshots(rs))
	require.Equal(t, 0.0, missedCount(t, rs.Name))

	h.advance(t2, rs)
	h.waitRun(rs, t2)
	require.Contains(t, h.waitSnapshots(rs, 1), objectName(rs.Name, vol.Name, t2, false))
}

func TestVolumesFromPolicyAndSelector(t *testing.T) {
	h := newHarness(t, "targets")
	labels, sel := h.selectAll()
	bySelector := h.volume("selected", labels)
	byPolicy := h.volume("policy", nil)
	standby := h.volume("standby", labels)
	h.volume("other", nil)
	otherPolicy := h.volume("other-policy", nil)
	standby.Spec.Standby = true
	require.NoError(t, k8s.Update(h.ctx, standby))

	rsName := h.name("snap")
	pol := &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: h.name("gold")}, Spec: v1.VolumePolicySpec{RecurringSnapshots: []v1.ObjectName{v1.ObjectName(rsName)}}}
	require.NoError(t, k8s.Create(h.ctx, pol))
	silver := &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: h.name("silver")}}
	require.NoError(t, k8s.Create(h.ctx, silver))
	// Playing the Volume controller, which resolves each volume's policy.
	h.patchStatus(byPolicy, `{"effectivePolicy":"`+pol.Name+`"}`)
	h.patchStatus(otherPolicy, `{"effectivePolicy":"`+silver.Name+`"}`)

	rs := h.schedule("snap", v1.RecurringSnapshotSpec{Schedule: "0 * * * *", Selector: sel})
	h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) { assert.Equal(c, int32(2), st.VolumeCount) })
	t1 := firstRun(hourly(t, "UTC"), rs)
	h.advance(t1, rs)
	h.waitRun(rs, t1)
	snaps := h.waitSnapshots(rs, 2)
	require.Contains(t, snaps, objectName(rs.Name, bySelector.Name, t1, false))
	require.Contains(t, snaps, objectName(rs.Name, byPolicy.Name, t1, false))

	// The policy dropping the schedule drops its volumes (a policy change
	// reconciles the schedule).
	pol.Spec.RecurringSnapshots = nil
	require.NoError(t, k8s.Update(h.ctx, pol))
	h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) { assert.Equal(c, int32(1), st.VolumeCount) })
}

func TestRetentionEndToEnd(t *testing.T) {
	h := newHarness(t, "retention")
	labels, sel := h.selectAll()
	vol := h.volume("a", labels)
	// Two more volumes pin backups: one restoring from a backup, and a DR standby's.
	restoring := h.volume("restoring", nil)
	dr := &v1.DisasterRecoveryVolume{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: h.name("standby")},
		Spec:       v1.DisasterRecoveryVolumeSpec{BackupTargetRef: "primary", SourceVolume: vol.Name, Claim: v1.ClaimTemplate{Name: "pg-data"}},
	}
	require.NoError(t, k8s.Create(h.ctx, dr))

	ret := v1.Retention{KeepLast: 2, Daily: 2}
	sched, err := policies.ParseSchedule("0 */8 * * *", "UTC")
	require.NoError(t, err)
	rs := h.schedule("backup", v1.RecurringSnapshotSpec{Schedule: "0 */8 * * *", Action: v1.ActionBackup, BackupTargetRef: "primary", Retention: &ret, Selector: sel})

	id := func(run time.Time) string { return "bk-" + run.UTC().Format("200601021504") }
	var items []policies.Item
	run := firstRun(sched, rs)
	var runs []time.Time
	for i := range 9 {
		h.advance(run, rs)
		h.waitRun(rs, run)
		name := objectName(rs.Name, vol.Name, run, false)
		var b v1.Backup
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.NoError(c, k8s.Get(h.ctx, client.ObjectKey{Name: name}, &b))
		}, wait, 20*time.Millisecond)
		require.Equal(t, v1.BackupSpec{VolumeName: vol.Name, BackupTargetRef: "primary", DeletePolicy: "Delete"}, b.Spec)
		require.Empty(t, b.OwnerReferences, "backups outlive volumes and schedules")
		require.Equal(t, map[string]string{v1.LabelVolume: vol.Name, v1.LabelRecurringSnapshot: rs.Name}, b.Labels)
		h.completeBackup(name, id(run), run)
		items = append(items, policies.Item{Name: name, Time: run, Pinned: i < 2})
		runs = append(runs, run)
		switch i {
		case 0: // pinned by a volume still restoring it
			h.patchStatus(restoring, `{"restoredBackup":"`+id(run)+`"}`)
		case 1: // pinned by the DR standby that last applied it
			h.patchStatus(dr, `{"lastRestoredBackup":"`+id(run)+`"}`)
		}
		h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) {
			assert.True(c, st.LastSuccessfulTime != nil && st.LastSuccessfulTime.Time.Equal(run))
		})
		run = sched.Next(run)
	}

	// Exactly what policies.Retain keeps remains: the pinned ones and the newest among them.
	keep, prune := policies.Retain(items, ret, runs[len(runs)-1], time.UTC)
	require.NotEmpty(t, prune, "the sequence prunes something")
	require.Contains(t, keep, items[0].Name)
	require.Contains(t, keep, items[1].Name)
	require.Contains(t, keep, items[len(items)-1].Name)
	h.waitBackups(rs, keep)

	// The restore finished: its backup is no longer pinned and goes.
	h.patchStatus(restoring, `{"conditions":[{"type":"Restored","status":"True","reason":"Restored","message":"done","lastTransitionTime":"`+
		time.Now().UTC().Format(time.RFC3339)+`"}]}`)
	items[0].Pinned = false
	keep, _ = policies.Retain(items, ret, runs[len(runs)-1], time.UTC)
	require.NotContains(t, keep, items[0].Name)
	require.Contains(t, keep, items[1].Name, "still pinned by the DR standby")
	h.waitBackups(rs, keep)
	requireEvent(t, h, rs, "Pruned")
}

// waitBackups waits until exactly the named backups of the schedule remain.
func (h *harness) waitBackups(rs *v1.RecurringSnapshot, want []string) {
	h.t.Helper()
	slices.Sort(want)
	require.EventuallyWithT(h.t, func(c *assert.CollectT) {
		var got []string
		for _, b := range h.backups(rs) {
			got = append(got, b.Name)
		}
		slices.Sort(got)
		assert.Equal(c, want, got)
	}, wait, 20*time.Millisecond)
}

func TestDeletingScheduleKeepsData(t *testing.T) {
	h := newHarness(t, "delete")
	labels, sel := h.selectAll()
	vol := h.volume("a", labels)
	snapRS := h.schedule("snap", v1.RecurringSnapshotSpec{Schedule: "0 * * * *", Selector: sel})
	backupRS := h.schedule("backup", v1.RecurringSnapshotSpec{Schedule: "0 * * * *", Action: v1.ActionBackup, BackupTargetRef: "primary", Selector: sel})
	t1 := firstRun(hourly(t, "UTC"), snapRS)
	require.True(t, firstRun(hourly(t, "UTC"), backupRS).Equal(t1))
	h.advance(t1, snapRS, backupRS)
	snaps := h.waitSnapshots(snapRS, 1)
	var backups []v1.Backup
	require.EventuallyWithT(t, func(c *assert.CollectT) { backups = h.backups(backupRS); assert.Len(c, backups, 1) }, wait, 20*time.Millisecond)

	// Nothing refers to a schedule as its owner, so neither deletion nor the
	// garbage collector can take data with it.
	for _, s := range snaps {
		require.Len(t, s.OwnerReferences, 1)
		require.Equal(t, vol.UID, s.OwnerReferences[0].UID)
	}
	require.Empty(t, backups[0].OwnerReferences)
	for _, rs := range []*v1.RecurringSnapshot{snapRS, backupRS} {
		require.NoError(t, k8s.Delete(h.ctx, rs))
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.True(c, apierrors.IsNotFound(k8s.Get(h.ctx, client.ObjectKeyFromObject(rs), &v1.RecurringSnapshot{})))
		}, wait, 20*time.Millisecond)
	}
	require.Len(t, h.snapshots(snapRS), 1)
	require.Len(t, h.backups(backupRS), 1)
}

// requireEvent waits for an event with reason about the schedule.
func requireEvent(t *testing.T, h *harness, rs *v1.RecurringSnapshot, reason string) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var list eventsv1.EventList
		if !assert.NoError(c, k8s.List(h.ctx, &list)) {
			return
		}
		found := slices.ContainsFunc(list.Items, func(e eventsv1.Event) bool {
			return e.Regarding.Name == rs.Name && e.Reason == reason
		})
		assert.True(c, found, "event %s on %s", reason, rs.Name)
	}, wait, 50*time.Millisecond)
}

func condTrue(st v1.RecurringSnapshotStatus, t string) bool {
	for _, c := range st.Conditions {
		if c.Type == t {
			return c.Status == metav1.ConditionTrue
		}
	}
	return false
}

func readyReason(st v1.RecurringSnapshotStatus) string {
	for _, c := range st.Conditions {
		if c.Type == v1.ConditionReady {
			return c.Reason
		}
	}
	return ""
}

func countTrue(m map[string]bool) int {
	n := 0
	for _, v := range m {
		if v {
			n++
		}
	}
	return n
}

func mapKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// missedCount reads cairn_recurring_missed_runs_total{schedule} as the
// manager's metrics endpoint would export it.
func missedCount(t *testing.T, schedule string) float64 {
	families, err := metrics.Registry.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != "cairn_recurring_missed_runs_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "schedule" && l.GetValue() == schedule {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
