package policies

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseSchedule(t *testing.T) {
	cases := []struct {
		expr, tz string
		wantErr  string
	}{
		{"0 * * * *", "UTC", ""},
		{"30 2 * * 1-5", "Europe/Berlin", ""},
		{"@daily", "America/New_York", ""},
		{"0 25 * * *", "UTC", "end of range (25) above maximum (23)"},
		{"0 * * *", "UTC", "has 4 fields, want 5"},
		{"0 0 * * * *", "UTC", "has 6 fields, want 5"},
		{"TZ=UTC 0 * * * *", "", "put the time zone in timeZone"},
		{"@every 5m", "", "@every is not a calendar schedule"},
		{"0 0 30 2 *", "UTC", "never runs"},
		{"0 * * * *", "Mars/Olympus", `unknown time zone "Mars/Olympus"`},
		{"0 * * * *", "Local", `unknown time zone "Local"`},
	}
	for _, c := range cases {
		t.Run(c.expr+"/"+c.tz, func(t *testing.T) {
			_, err := ParseSchedule(c.expr, c.tz)
			if c.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, c.wantErr)
		})
	}
}

func TestShortestInterval(t *testing.T) {
	from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		expr, tz string
		want     time.Duration
	}{
		{"*/5 * * * *", "UTC", 5 * time.Minute},
		{"0 * * * *", "UTC", time.Hour},
		{"0,10 * * * *", "UTC", 10 * time.Minute},
		{"0 3 * * *", "UTC", 24 * time.Hour},
		// Across the spring-forward gap a daily 02:30 run in Berlin happens
		// at 03:00 (the first instant after the gap), so one day is 23.5h.
		{"30 2 * * *", "Europe/Berlin", 23*time.Hour + 30*time.Minute},
	}
	for _, c := range cases {
		s, err := ParseSchedule(c.expr, c.tz)
		require.NoError(t, err)
		require.Equal(t, c.want, s.ShortestInterval(from), c.expr)
	}
}

func TestScheduleDST(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	require.NoError(t, err)
	cases := []struct {
		name, expr string
		after      time.Time
		want       []string // successive activations, RFC3339 in Berlin
	}{
		{
			name:  "fall back: 02:30 happens twice, runs once",
			expr:  "30 2 * * *",
			after: time.Date(2026, 10, 24, 12, 0, 0, 0, berlin),
			want:  []string{"2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"},
		},
		{
			name:  "fall back: hourly skips the repeated hour",
			expr:  "30 * * * *",
			after: time.Date(2026, 10, 25, 1, 0, 0, 0, berlin),
			want:  []string{"2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T03:30:00+01:00"},
		},
		{
			name:  "spring forward: 02:30 does not exist",
			expr:  "30 2 * * *",
			after: time.Date(2026, 3, 28, 12, 0, 0, 0, berlin),
			want:  []string{"2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"},
		},
		{
			name:  "spring forward: hourly run in the gap moves to its end",
			expr:  "30 * * * *",
			after: time.Date(2026, 3, 29, 1, 0, 0, 0, berlin),
			want:  []string{"2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := ParseSchedule(c.expr, "Europe/Berlin")
			require.NoError(t, err)
			got := []string{}
			at := c.after
			for range c.want {
				at = s.Next(at)
				got = append(got, at.Format(time.RFC3339))
			}
			require.Equal(t, c.want, got)
		})
	}
}
