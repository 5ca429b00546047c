package policies

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

func TestJitterOffset(t *testing.T) {
	cases := []struct {
		volume, schedule string
		jitter           time.Duration
		want             time.Duration
	}{
		// Fixed values (FNV-64a computed independently): a change here moves
		// every volume's start time.
		{"pvc-1", "hourly", 5 * time.Minute, 238 * time.Second},
		{"pvc-2", "hourly", 5 * time.Minute, 27 * time.Second},
		{"pvc-1", "nightly", 5 * time.Minute, 8 * time.Second},
		{"pvc-1", "hourly", 0, 0},
		{"pvc-1", "hourly", -time.Minute, 0},
		{"pvc-1", "hourly", 500 * time.Millisecond, 377225538 * time.Nanosecond},
	}
	for _, c := range cases {
		require.Equal(t, c.want, JitterOffset(c.volume, c.schedule, c.jitter), "%s/%s %s", c.schedule, c.volume, c.jitter)
	}
}

func TestJitterOffsetRangeAndSpread(t *testing.T) {
	for _, jitter := range []time.Duration{time.Nanosecond, 700 * time.Millisecond, time.Second, 5 * time.Minute, 24 * time.Hour} {
		seen := map[time.Duration]bool{}
		for i := range 200 {
			d := JitterOffset(fmt.Sprintf("pvc-%d", i), "hourly", jitter)
			require.GreaterOrEqual(t, d, time.Duration(0))
			require.Less(t, d, jitter)
			if jitter >= time.Second {
				require.Zero(t, d%time.Second, "whole seconds")
			}
			seen[d] = true
		}
		if jitter >= 5*time.Minute {
			require.Greater(t, len(seen), 100, "offsets spread over the window")
		}
	}
}

func TestInWindow(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	require.NoError(t, err)
	win := func(kind v1.WindowKind, start, end string, days ...v1.Weekday) v1.TimeWindow {
		return v1.TimeWindow{Kind: kind, Start: start, End: end, Days: days}
	}
	allow, deny := v1.WindowAllow, v1.WindowDeny
	// 2026-06-12 is a Friday.
	cases := []struct {
		name    string
		windows []v1.TimeWindow
		at      string // RFC3339
		loc     *time.Location
		want    bool
	}{
		{"no windows", nil, "2026-06-12T03:00:00Z", nil, true},
		{"inside allow", []v1.TimeWindow{win(allow, "01:00", "05:00")}, "2026-06-12T03:00:00Z", nil, true},
		{"allow start is inclusive", []v1.TimeWindow{win(allow, "01:00", "05:00")}, "2026-06-12T01:00:00Z", nil, true},
		{"allow end is exclusive", []v1.TimeWindow{win(allow, "01:00", "05:00")}, "2026-06-12T05:00:00Z", nil, false},
		{"last second before end", []v1.TimeWindow{win(allow, "01:00", "05:00")}, "2026-06-12T04:59:59Z", nil, true},
		{"outside allow", []v1.TimeWindow{win(allow, "01:00", "05:00")}, "2026-06-12T00:59:00Z", nil, false},
		{"in one of two allows", []v1.TimeWindow{win(allow, "01:00", "02:00"), win(allow, "12:00", "13:00")}, "2026-06-12T12:30:00Z", nil, true},
		{"deny on a weekday", []v1.TimeWindow{win(deny, "09:00", "17:00", "Mon", "Tue", "Wed", "Thu", "Fri")}, "2026-06-12T10:00:00Z", nil, false},
		{"deny not on Saturday", []v1.TimeWindow{win(deny, "09:00", "17:00", "Mon", "Tue", "Wed", "Thu", "Fri")}, "2026-06-13T10:00:00Z", nil, true},
		{"deny beats allow", []v1.TimeWindow{win(allow, "00:00", "06:00"), win(deny, "02:00", "03:00")}, "2026-06-12T02:30:00Z", nil, false},
		{"allow around a deny", []v1.TimeWindow{win(allow, "00:00", "06:00"), win(deny, "02:00", "03:00")}, "2026-06-12T04:00:00Z", nil, true},
		{"allow day not matching", []v1.TimeWindow{win(allow, "01:00", "05:00", "Sun")}, "2026-06-12T03:00:00Z", nil, false},
		// A Friday window across midnight runs Fri 22:00 to Sat 02:00.
		{"across midnight, before midnight", []v1.TimeWindow{win(allow, "22:00", "02:00", "Fri")}, "2026-06-12T23:00:00Z", nil, true},
		{"across midnight, after midnight next day", []v1.TimeWindow{win(allow, "22:00", "02:00", "Fri")}, "2026-06-13T01:30:00Z", nil, true},
		{"across midnight, ends next day", []v1.TimeWindow{win(allow, "22:00", "02:00", "Fri")}, "2026-06-13T02:00:00Z", nil, false},
		{"across midnight, not Saturday's own", []v1.TimeWindow{win(allow, "22:00", "02:00", "Fri")}, "2026-06-13T23:00:00Z", nil, false},
		{"across midnight, Friday morning is Thursday's", []v1.TimeWindow{win(allow, "22:00", "02:00", "Fri")}, "2026-06-12T01:30:00Z", nil, false},
		{"across midnight every day", []v1.TimeWindow{win(deny, "23:00", "01:00")}, "2026-06-12T00:30:00Z", nil, false},
		{"read in the zone, not UTC", []v1.TimeWindow{win(allow, "22:00", "02:00")}, "2026-06-12T20:30:00Z", berlin, true},
		{"same instant in UTC is outside", []v1.TimeWindow{win(allow, "22:00", "02:00")}, "2026-06-12T20:30:00Z", nil, false},
		// 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST.
		{"spring forward: after the gap in window", []v1.TimeWindow{win(allow, "01:00", "04:00")}, "2026-03-29T03:30:00+02:00", berlin, true},
		{"spring forward: window across midnight ends at 03:00", []v1.TimeWindow{win(allow, "23:00", "03:00", "Sat")}, "2026-03-29T03:00:00+02:00", berlin, false},
		{"spring forward: before the gap", []v1.TimeWindow{win(allow, "23:00", "03:00", "Sat")}, "2026-03-29T01:59:00+01:00", berlin, true},
		// 2026-10-25: Berlin goes 03:00 CEST back to 02:00 CET; 02:xx happens twice.
		{"fall back: first 02:30 denied", []v1.TimeWindow{win(deny, "02:00", "03:00")}, "2026-10-25T02:30:00+02:00", berlin, false},
		{"fall back: second 02:30 denied", []v1.TimeWindow{win(deny, "02:00", "03:00")}, "2026-10-25T02:30:00+01:00", berlin, false},
		{"fall back: 03:00 CET allowed", []v1.TimeWindow{win(deny, "02:00", "03:00")}, "2026-10-25T03:00:00+01:00", berlin, true},
		{"malformed deny contains nothing", []v1.TimeWindow{win(deny, "25:00", "03:00")}, "2026-06-12T02:00:00Z", nil, true},
		{"malformed allow still restricts", []v1.TimeWindow{win(allow, "1:00", "03:00")}, "2026-06-12T02:00:00Z", nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			at, err := time.Parse(time.RFC3339, c.at)
			require.NoError(t, err)
			require.Equal(t, c.want, InWindow(c.windows, at, c.loc))
		})
	}
}

func TestMissedRun(t *testing.T) {
	cases := []struct {
		name, expr, tz string
		last, now      string // RFC3339; last "" is the zero time
		want           string // "" means no run
	}{
		{"one catch-up for five missed hours", "0 * * * *", "UTC", "2026-06-15T10:00:00Z", "2026-06-15T15:30:00Z", "2026-06-15T15:00:00Z"},
		{"nothing missed", "0 * * * *", "UTC", "2026-06-15T15:00:00Z", "2026-06-15T15:30:00Z", ""},
		{"now is inclusive", "0 * * * *", "UTC", "2026-06-15T15:00:00Z", "2026-06-15T16:00:00Z", "2026-06-15T16:00:00Z"},
		{"last is exclusive", "0 * * * *", "UTC", "2026-06-15T16:00:00Z", "2026-06-15T16:00:00Z", ""},
		{"now before last", "0 * * * *", "UTC", "2026-06-15T16:00:00Z", "2026-06-15T12:00:00Z", ""},
		{"a year of minutely runs missed", "* * * * *", "UTC", "2025-06-15T10:00:00Z", "2026-06-15T15:30:42Z", "2026-06-15T15:30:00Z"},
		{"zero last: yearly", "0 0 1 1 *", "UTC", "", "2026-06-15T15:30:00Z", "2026-01-01T00:00:00Z"},
		{"zero last: 29 February", "0 0 29 2 *", "UTC", "", "2027-06-15T00:00:00Z", "2024-02-29T00:00:00Z"},
		{"weekly in a zone", "0 3 * * 1", "America/New_York", "2026-05-04T03:00:00-04:00", "2026-06-10T00:00:00-04:00", "2026-06-08T03:00:00-04:00"},
		{"spring forward: the gap run moves to 03:00", "30 2 * * *", "Europe/Berlin", "2026-03-27T02:30:00+01:00", "2026-03-29T12:00:00+02:00", "2026-03-29T03:00:00+02:00"},
		{"fall back: the repeated 02:30 is its first pass", "30 2 * * *", "Europe/Berlin", "2026-10-24T02:30:00+02:00", "2026-10-25T02:45:00+01:00", "2026-10-25T02:30:00+02:00"},
		{"fall back: already ran at the first pass", "30 2 * * *", "Europe/Berlin", "2026-10-25T02:30:00+02:00", "2026-10-25T02:45:00+01:00", ""},
	}
	parse := func(s string) time.Time {
		if s == "" {
			return time.Time{}
		}
		ts, err := time.Parse(time.RFC3339, s)
		require.NoError(t, err)
		return ts
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := ParseSchedule(c.expr, c.tz)
			require.NoError(t, err)
			due, ok := MissedRun(s, parse(c.last), parse(c.now))
			if c.want == "" {
				require.False(t, ok, "got %s", due)
				return
			}
			require.True(t, ok)
			require.True(t, parse(c.want).Equal(due), "want %s, got %s", c.want, due)
		})
	}
}
