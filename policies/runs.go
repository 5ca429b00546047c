package policies

import (
	"hash/fnv"
	"slices"
	"time"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// JitterOffset is how long after each scheduled time the run for volume
// starts: FNV-64a of schedule+"/"+volume modulo jitter, in [0, jitter). It
// depends only on its arguments, so every process and restart agrees. With a
// jitter of a second or more the offset is whole seconds, so a jittered time
// survives metav1.Time's second precision. Jitter <= 0 gives 0.
func JitterOffset(volume, schedule string, jitter time.Duration) time.Duration {
	if jitter <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(schedule + "/" + volume))
	sum := h.Sum64()
	if secs := uint64(jitter / time.Second); secs > 0 {
		return time.Duration(sum%secs) * time.Second
	}
	return time.Duration(sum % uint64(jitter))
}

// InWindow reports whether a run may start at t. A deny window containing t
// forbids it; otherwise, with any allow window, t must be inside one; with
// no windows every time is allowed.
//
// Windows are read on the wall clock in loc (nil means UTC): start is
// inclusive, end exclusive. A window whose end is before its start crosses
// midnight and belongs to the day it starts on, so {Mon 22:00-02:00} covers
// Monday 22:00 to Tuesday 02:00. On DST days a window spans the wall-clock
// times that exist: it is shorter across a spring-forward gap and longer
// across a repeated hour. A malformed window (the API refuses them) contains
// no time, though an allow window still requires runs to be in some window.
func InWindow(windows []v1.TimeWindow, t time.Time, loc *time.Location) bool {
	if loc == nil {
		loc = time.UTC
	}
	t = t.In(loc)
	anyAllow, inAllow := false, false
	for _, w := range windows {
		in := windowContains(w, t)
		if w.Kind == v1.WindowDeny && in {
			return false
		}
		if w.Kind == v1.WindowAllow {
			anyAllow = true
			inAllow = inAllow || in
		}
	}
	return !anyAllow || inAllow
}

// windowContains reports whether wall-clock t lies in w on a day w applies to.
func windowContains(w v1.TimeWindow, t time.Time) bool {
	start, ok1 := minuteOfDay(w.Start)
	end, ok2 := minuteOfDay(w.End)
	if !ok1 || !ok2 || start == end {
		return false
	}
	m := t.Hour()*60 + t.Minute()
	if start < end {
		return start <= m && m < end && onDay(w.Days, t.Weekday())
	}
	yesterday := (t.Weekday() + 6) % 7
	return (m >= start && onDay(w.Days, t.Weekday())) || (m < end && onDay(w.Days, yesterday))
}

// minuteOfDay parses "HH:MM" (24h) into minutes after midnight.
func minuteOfDay(s string) (int, bool) {
	hm, err := time.Parse("15:04", s)
	if err != nil || len(s) != 5 {
		return 0, false
	}
	return hm.Hour()*60 + hm.Minute(), true
}

// onDay reports whether days (Mon..Sun; empty means every day) includes d.
func onDay(days []v1.Weekday, d time.Weekday) bool {
	return len(days) == 0 || slices.Contains(days, v1.Weekday(d.String()[:3]))
}

// missedRunHorizon bounds how far back MissedRun looks when lastScheduled is
// zero or older; no accepted schedule is idle for longer (29 February can be
// eight years apart).
const missedRunHorizon = 10 * 366 * 24 * time.Hour

// MissedRun returns the one run to catch up after downtime: the most recent
// scheduled time (before jitter) in (lastScheduled, now], however many were
// missed. ok is false when none fell in that span. A zero lastScheduled
// means no lower bound; the search never looks back further than ten years.
func MissedRun(s *Schedule, lastScheduled, now time.Time) (due time.Time, ok bool) {
	floor := now.Add(-missedRunHorizon)
	if lastScheduled.After(floor) {
		floor = lastScheduled
	}
	// Widen the look-back until it holds a run, so a frequent schedule after a
	// long downtime walks only the last few activations.
	for back := time.Minute; ; back *= 2 {
		from := now.Add(-back)
		if !from.After(floor) {
			from = floor
		}
		if due, ok = lastRunBetween(s, from, now); ok || !from.After(floor) {
			return due, ok
		}
	}
}

// lastRunBetween returns the latest activation in (from, now].
func lastRunBetween(s *Schedule, from, now time.Time) (time.Time, bool) {
	var last time.Time
	for n := s.Next(from); !n.IsZero() && !n.After(now); n = s.Next(n) {
		last = n
	}
	return last, !last.IsZero()
}
