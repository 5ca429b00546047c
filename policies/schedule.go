package policies

import (
	"errors"
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // IANA zones even on images without /usr/share/zoneinfo

	"github.com/robfig/cron/v3"
)

// ErrInvalidSchedule is wrapped by every schedule parsing error.
var ErrInvalidSchedule = errors.New("invalid schedule")

// cronParser accepts the standard 5-field syntax and @descriptors; seconds
// and the non-standard TZ= prefix are refused so the time zone has one home.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Schedule is a parsed cron expression bound to a time zone.
type Schedule struct {
	spec cron.Schedule
	loc  *time.Location
}

// ParseSchedule parses a 5-field cron expression (or @hourly, @daily, ...)
// read in the IANA zone tz ("" means UTC).
func ParseSchedule(expr, tz string) (*Schedule, error) {
	loc, err := LoadZone(tz)
	if err != nil {
		return nil, err
	}
	expr = strings.TrimSpace(expr)
	if strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ=") {
		return nil, fmt.Errorf("%w: put the time zone in timeZone, not in the schedule", ErrInvalidSchedule)
	}
	if !strings.HasPrefix(expr, "@") {
		if n := len(strings.Fields(expr)); n != 5 {
			return nil, fmt.Errorf("%w: %q has %d fields, want 5 (minute hour day-of-month month day-of-week)", ErrInvalidSchedule, expr, n)
		}
	}
	if strings.HasPrefix(expr, "@every") {
		return nil, fmt.Errorf("%w: @every is not a calendar schedule; use a 5-field expression", ErrInvalidSchedule)
	}
	spec, err := cronParser.Parse(expr)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrInvalidSchedule, expr, err)
	}
	s := &Schedule{spec: spec, loc: loc}
	if s.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
		return nil, fmt.Errorf("%w: %q never runs", ErrInvalidSchedule, expr)
	}
	return s, nil
}

// LoadZone resolves an IANA time-zone name; "" means UTC. Abbreviations and
// "Local" are refused because their meaning depends on the machine.
func LoadZone(tz string) (*time.Location, error) {
	if tz == "" || tz == "UTC" {
		return time.UTC, nil
	}
	if tz == "Local" {
		return nil, fmt.Errorf("unknown time zone %q: use an IANA name such as Europe/Berlin", tz)
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone %q: use an IANA name such as Europe/Berlin or America/New_York", tz)
	}
	return loc, nil
}

// Next returns the first activation strictly after t, in the schedule's zone.
// When clocks fall back, a wall-clock time that occurs twice runs only at its
// first occurrence. When they spring forward, a run whose wall-clock time
// falls in the skipped gap runs at the first instant after the gap (cron
// itself would silently drop it, and a nightly backup would miss a day).
func (s *Schedule) Next(t time.Time) time.Time {
	t = t.In(s.loc)
	n := s.spec.Next(t)
	for i := 0; i < 4 && !n.IsZero() && isRepeatedWallClock(n); i++ {
		n = s.spec.Next(n)
	}
	if gapEnd, ok := s.skippedGapRun(t, n); ok {
		return gapEnd
	}
	return n
}

// skippedGapRun finds a spring-forward transition between t and n at which
// the schedule wanted a wall-clock time inside the gap, and returns the
// transition instant (the first valid instant after the gap).
func (s *Schedule) skippedGapRun(t, n time.Time) (time.Time, bool) {
	if n.IsZero() {
		n = t.AddDate(5, 0, 0)
	}
	_, offT := t.Zone()
	_, offN := n.Zone()
	if offN <= offT {
		return time.Time{}, false
	}
	// Binary search for the first instant with the new offset.
	lo, hi := t, n
	for hi.Sub(lo) > time.Second {
		mid := lo.Add(hi.Sub(lo) / 2)
		if _, off := mid.Zone(); off == offT {
			lo = mid
		} else {
			hi = mid
		}
	}
	transition := hi.Truncate(time.Second)
	gap := time.Duration(offN-offT) * time.Second
	// In a fixed zone with the old offset the gap's wall-clock times exist.
	before := time.FixedZone("", offT)
	c := s.spec.Next(t.In(before))
	if !c.IsZero() && !c.Before(transition) && c.Before(transition.Add(gap)) && !transition.After(n) {
		return transition.In(s.loc), true
	}
	return time.Time{}, false
}

// isRepeatedWallClock reports whether the wall-clock time of t already
// occurred earlier the same day (the second pass through a fall-back hour).
// Real zones shift by 30 minutes, one hour or two hours.
func isRepeatedWallClock(t time.Time) bool {
	const layout = "2006-01-02 15:04"
	wall := t.Format(layout)
	for _, d := range []time.Duration{30 * time.Minute, time.Hour, 2 * time.Hour} {
		if t.Add(-d).Format(layout) == wall {
			return true
		}
	}
	return false
}

// Location is the schedule's time zone.
func (s *Schedule) Location() *time.Location { return s.loc }

// ShortestInterval returns the smallest gap between consecutive activations
// over the year after from (sampling at most 20000 activations). A jitter at
// least this long could push a run past the next one.
func (s *Schedule) ShortestInterval(from time.Time) time.Duration {
	end := from.AddDate(1, 0, 0)
	prev := s.Next(from)
	shortest := time.Duration(0)
	for i := 0; i < 20000 && !prev.IsZero() && prev.Before(end); i++ {
		next := s.Next(prev)
		if next.IsZero() {
			break
		}
		if gap := next.Sub(prev); shortest == 0 || gap < shortest {
			shortest = gap
		}
		prev = next
	}
	return shortest
}
