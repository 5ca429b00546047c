package dashboard

import (
	"net/http"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/policies"
)

// scheduleRow is one RecurringSnapshot with its next runs in its zone.
type scheduleRow struct {
	v1.RecurringSnapshot
	Zone     string
	NextRuns []string
	Error    string
	Missed   []eventRow
	Results  []v1.RunResult
}

func (s *Server) schedules(r *http.Request) (view, error) {
	var list v1.RecurringSnapshotList
	if err := s.c.List(r.Context(), &list); err != nil {
		return view{}, err
	}
	rows := make([]scheduleRow, 0, len(list.Items))
	for _, rs := range list.Items {
		row := scheduleRow{RecurringSnapshot: rs, Zone: rs.Spec.TimeZone, Results: recentFirst(rs.Status.RecentResults)}
		if row.Zone == "" {
			row.Zone = "UTC"
		}
		row.NextRuns, row.Error = nextRuns(rs, s.now(), 3)
		ev, err := s.events(r.Context(), "RecurringSnapshot", rs.Name)
		if err != nil {
			return view{}, err
		}
		for _, e := range ev {
			if e.Reason == "MissedRuns" || e.Reason == "RunNotStarted" || e.Reason == "RunSkipped" {
				row.Missed = append(row.Missed, e)
			}
		}
		rows = append(rows, row)
	}
	slices.SortFunc(rows, func(a, b scheduleRow) int { return strings.Compare(a.Name, b.Name) })
	return view{Title: "Schedules", Template: "schedules", Data: rows}, nil
}

// nextRuns lists the schedule's next n run times in its own time zone
// (before jitter, which differs per volume).
func nextRuns(rs v1.RecurringSnapshot, now time.Time, n int) ([]string, string) {
	if rs.Spec.Suspend {
		return nil, "suspended"
	}
	sched, err := policies.ParseSchedule(rs.Spec.Schedule, rs.Spec.TimeZone)
	if err != nil {
		return nil, err.Error()
	}
	var out []string
	t := now
	for range n {
		t = sched.Next(t)
		out = append(out, t.In(sched.Location()).Format("Mon 2006-01-02 15:04 MST"))
	}
	return out, ""
}

func recentFirst(results []v1.RunResult) []v1.RunResult {
	out := slices.Clone(results)
	slices.SortFunc(out, func(a, b v1.RunResult) int { return b.ScheduledTime.Compare(a.ScheduledTime.Time) })
	return out[:min(len(out), 10)]
}

// selects reports whether a label selector (nil selects nothing) matches.
func selects(sel *metav1.LabelSelector, lbls map[string]string) bool {
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() {
		return false
	}
	return s.Matches(labels.Set(lbls))
}
