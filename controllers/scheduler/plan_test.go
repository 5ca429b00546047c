package scheduler

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/policies"
)

func TestObjectName(t *testing.T) {
	run := time.Date(2026, 3, 29, 1, 30, 0, 0, time.FixedZone("CET", 3600)) // 00:30 UTC
	long := strings.Repeat("v", 240)
	cases := []struct {
		name, schedule, volume string
		hashed                 bool
		want                   string
	}{
		{"plain", "hourly", "pvc-1", false, "hourly-pvc-1-202603290030"},
		{"dotted names", "team.hourly", "db.pvc-1", false, "team.hourly-db.pvc-1-202603290030"},
		{"hashed on collision", "a-b", "c", true, "a-b-c-202603290030-"},
		{"too long: shortened and hashed", "nightly", long, false, "nightly-" + long[:221] + "-202603290030-"},
		{"cut ends at a separator", "nightly", strings.Repeat("a.", 120) + "b", false, "nightly-a.a."},
		{"cut ends at a dash", "nightly", strings.Repeat("a-", 120) + "b", false, "nightly-a-a-"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := objectName(c.schedule, c.volume, run, c.hashed)
			require.True(t, strings.HasPrefix(got, c.want), got)
			require.LessOrEqual(t, len(got), 253)
			require.Empty(t, validation.IsDNS1123Subdomain(got), got)
			require.Equal(t, got, objectName(c.schedule, c.volume, run, c.hashed), "deterministic")
		})
	}
	// The names "a-b"+"c" and "a"+"b-c" collide in plain form only.
	require.Equal(t, objectName("a-b", "c", run, false), objectName("a", "b-c", run, false))
	require.NotEqual(t, objectName("a-b", "c", run, true), objectName("a", "b-c", run, true))
	// Two long volumes that share a prefix keep distinct names.
	require.NotEqual(t, objectName("s", long+"x", run, false), objectName("s", long+"y", run, false))
}

func TestLabelValue(t *testing.T) {
	require.Equal(t, "pvc-1", labelValue("pvc-1"))
	long := labelValue(strings.Repeat("a", 64))
	require.True(t, strings.HasPrefix(long, "h-"))
	require.Empty(t, validation.IsValidLabelValue(long))
	require.Empty(t, validation.IsValidLabelValue(labelValue("a.b.c-")), "dots are fine, a trailing dash is not")
}

func TestDueRun(t *testing.T) {
	hourly, err := policies.ParseSchedule("0 * * * *", "UTC")
	require.NoError(t, err)
	berlin, err := policies.ParseSchedule("30 2 * * *", "Europe/Berlin")
	require.NoError(t, err)
	at := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339, s)
		require.NoError(t, err)
		return tm
	}
	cases := []struct {
		name        string
		sched       *policies.Schedule
		cursor, now string
		due         bool
		run         string
		missed      int
	}{
		{"nothing due yet", hourly, "2026-01-01T10:00:00Z", "2026-01-01T10:59:59Z", false, "", 0},
		{"due on time", hourly, "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z", true, "2026-01-01T11:00:00Z", 0},
		{"a little late", hourly, "2026-01-01T10:00:00Z", "2026-01-01T11:00:07Z", true, "2026-01-01T11:00:00Z", 0},
		{"down three intervals: one run, two missed", hourly, "2026-01-01T10:00:00Z", "2026-01-01T13:30:00Z", true, "2026-01-01T13:00:00Z", 2},
		{"down a week", hourly, "2026-01-01T10:00:00Z", "2026-01-08T10:30:00Z", true, "2026-01-08T10:00:00Z", 7*24 - 1},
		{"cursor is the creation time", hourly, "2026-01-01T10:20:00Z", "2026-01-01T11:00:00Z", true, "2026-01-01T11:00:00Z", 0},
		// 02:30 does not exist on 29 March in Berlin: that run is at 03:00 CEST.
		{"spring forward gap", berlin, "2026-03-28T02:30:00+01:00", "2026-03-29T03:10:00+02:00", true, "2026-03-29T01:00:00Z", 0},
		{"fall back runs once", berlin, "2026-10-25T02:30:00+02:00", "2026-10-25T02:45:00+01:00", false, "", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			run, missed, ok := dueRun(c.sched, at(c.cursor), at(c.now))
			require.Equal(t, c.due, ok)
			if c.due {
				require.True(t, at(c.run).Equal(run), "run %s", run)
			}
			require.Equal(t, c.missed, missed)
		})
	}
}

func TestPlanRun(t *testing.T) {
	run := time.Date(2026, 6, 12, 10, 0, 0, 0, time.UTC)
	spec := &v1.RecurringSnapshotSpec{Jitter: &metav1.Duration{Duration: 5 * time.Minute}}
	// JitterOffset("pvc-1", "hourly", 5m) = 238s, ("pvc-2", "hourly", 5m) = 27s (policies' tests).
	old := run.Add(-time.Hour)
	targets := []target{{"pvc-1", old}, {"pvc-2", old}, {"pvc-3", run.Add(10 * time.Minute)}, {"pvc-4", old}}
	has := func(vol string, r time.Time) bool { return vol == "pvc-4" && r.Equal(run) }
	states := func(now time.Time, spec *v1.RecurringSnapshotSpec) map[string]volumeState {
		out := map[string]volumeState{}
		for _, vr := range planRun(spec, "hourly", time.UTC, run, now, targets, has) {
			out[vr.volume] = vr.state
		}
		return out
	}
	require.Equal(t, map[string]volumeState{"pvc-1": waiting, "pvc-2": waiting, "pvc-3": excluded, "pvc-4": started}, states(run, spec))
	require.Equal(t, map[string]volumeState{"pvc-1": waiting, "pvc-2": pending, "pvc-3": excluded, "pvc-4": started}, states(run.Add(27*time.Second), spec))
	require.Equal(t, map[string]volumeState{"pvc-1": pending, "pvc-2": pending, "pvc-3": excluded, "pvc-4": started}, states(run.Add(time.Hour), spec))

	deny := *spec
	deny.Windows = []v1.TimeWindow{{Kind: v1.WindowDeny, Start: "10:02", End: "11:00"}}
	require.Equal(t, map[string]volumeState{"pvc-1": skipped, "pvc-2": pending, "pvc-3": excluded, "pvc-4": started}, states(run.Add(time.Hour), &deny))

	// Pending volumes come first, in start order: pvc-2 (27s) before pvc-1 (238s).
	plan := planRun(spec, "hourly", time.UTC, run, run.Add(time.Hour), targets, has)
	require.Equal(t, []string{"pvc-2", "pvc-1"}, []string{plan[0].volume, plan[1].volume})

	// The wake-up is the next start still ahead, else the next run.
	next := run.Add(time.Hour)
	require.Equal(t, run.Add(27*time.Second), nextWake(next, planRun(spec, "hourly", time.UTC, run, run, targets, has)))
	require.Equal(t, run.Add(238*time.Second), nextWake(next, planRun(spec, "hourly", time.UTC, run, run.Add(30*time.Second), targets, has)))
	require.Equal(t, next, nextWake(next, planRun(spec, "hourly", time.UTC, run, run.Add(5*time.Minute), targets, has)))
}
