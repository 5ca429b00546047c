package scheduler

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestRPOCollector: a volume reports the age of its freshest recovery point
// across schedules; a volume never backed up counts from when it came under
// the schedule; a schedule's volumes are replaced on each set.
func TestRPOCollector(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	c := &rpoCollector{refs: map[string]map[string]time.Time{}, now: func() time.Time { return now }}
	rs := &v1.RecurringSnapshot{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(now.Add(-3 * time.Hour))}}
	fresh := &v1.Volume{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(now.Add(-48 * time.Hour))}}
	fresh.Status.LastBackupTime = &metav1.Time{Time: now.Add(-10 * time.Minute)}
	never := &v1.Volume{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(now.Add(-48 * time.Hour))}}
	late := &v1.Volume{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(now.Add(-time.Hour))}}
	c.set("nightly", map[string]time.Time{"a": recoveryPoint(fresh, rs), "b": recoveryPoint(never, rs), "c": recoveryPoint(late, rs)})
	c.set("hourly", map[string]time.Time{"b": now.Add(-5 * time.Minute)})
	want := `
# HELP cairn_volume_rpo_seconds Age of the volume's newest complete backup, for every volume with a backup schedule, attached or not; a volume never backed up reports the time since it came under the schedule.
# TYPE cairn_volume_rpo_seconds gauge
cairn_volume_rpo_seconds{volume="a"} 600
cairn_volume_rpo_seconds{volume="b"} 300
cairn_volume_rpo_seconds{volume="c"} 3600
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want)))
	c.set("hourly", nil)
	c.set("nightly", map[string]time.Time{"a": now.Add(-time.Minute)})
	require.Equal(t, 1, testutil.CollectAndCount(c))
}
