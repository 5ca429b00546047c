package policies

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

func TestRetain(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	require.NoError(t, err)
	now := time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)
	ago := func(name string, d time.Duration) Item { return Item{Name: name, Time: now.Add(-d)} }
	at := func(name, rfc3339 string) Item {
		ts, err := time.Parse(time.RFC3339, rfc3339)
		require.NoError(t, err)
		return Item{Name: name, Time: ts}
	}
	pinned := func(it Item) Item { it.Pinned = true; return it }
	maxAge := func(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }
	h, day := time.Hour, 24*time.Hour

	cases := []struct {
		name      string
		items     []Item
		r         v1.Retention
		loc       *time.Location
		keep, prn []string
	}{
		{name: "empty", r: v1.Retention{KeepLast: 3}},
		{
			name:  "keepLast only, input order does not matter",
			items: []Item{ago("c", 3*h), ago("a", 1*h), ago("e", 5*h), ago("b", 2*h), ago("d", 4*h)},
			r:     v1.Retention{KeepLast: 3},
			keep:  []string{"a", "b", "c"}, prn: []string{"d", "e"},
		},
		{
			name:  "equal times are ordered by name",
			items: []Item{ago("y", h), ago("x", h), ago("z", h)},
			r:     v1.Retention{KeepLast: 1},
			keep:  []string{"x"}, prn: []string{"y", "z"},
		},
		{
			name: "hourly: newest of each of the last 2 hours with items",
			items: []Item{at("10:05", "2026-06-15T10:05:00Z"), at("10:40", "2026-06-15T10:40:00Z"),
				at("11:10", "2026-06-15T11:10:00Z"), at("11:50", "2026-06-15T11:50:00Z"), at("07:30", "2026-06-15T07:30:00Z")},
			r:    v1.Retention{Hourly: 2},
			keep: []string{"11:50", "10:40"}, prn: []string{"11:10", "10:05", "07:30"},
		},
		{
			name: "daily: empty days are skipped, not counted",
			items: []Item{at("d15b", "2026-06-15T09:00:00Z"), at("d15a", "2026-06-15T01:00:00Z"),
				at("d12", "2026-06-12T09:00:00Z"), at("d10", "2026-06-10T09:00:00Z")},
			r:    v1.Retention{Daily: 2},
			keep: []string{"d15b", "d12"}, prn: []string{"d15a", "d10"},
		},
		{
			// 2026 has 53 ISO weeks: week 53 runs Mon 2026-12-28 to Sun 2027-01-03.
			name: "weekly: ISO week 53 spans the year end",
			items: []Item{at("mon-w1", "2027-01-04T08:00:00Z"), at("sat-w53", "2027-01-02T08:00:00Z"),
				at("tue-w53", "2026-12-29T08:00:00Z"), at("sun-w52", "2026-12-27T08:00:00Z")},
			r:    v1.Retention{Weekly: 3},
			keep: []string{"mon-w1", "sat-w53", "sun-w52"}, prn: []string{"tue-w53"},
		},
		{
			name: "monthly",
			items: []Item{at("jun", "2026-06-01T00:00:00Z"), at("may-end", "2026-05-31T23:00:00Z"),
				at("may-start", "2026-05-01T00:00:00Z"), at("mar", "2026-03-10T00:00:00Z"), at("jan", "2026-01-10T00:00:00Z")},
			r:    v1.Retention{Monthly: 3},
			keep: []string{"jun", "may-end", "mar"}, prn: []string{"may-start", "jan"},
		},
		{
			name: "yearly",
			items: []Item{at("2026", "2026-01-01T00:00:00Z"), at("2025b", "2025-12-31T00:00:00Z"),
				at("2025a", "2025-01-01T00:00:00Z"), at("2023", "2023-06-01T00:00:00Z"), at("2022", "2022-06-01T00:00:00Z")},
			r:    v1.Retention{Yearly: 3},
			keep: []string{"2026", "2025b", "2023"}, prn: []string{"2025a", "2022"},
		},
		{
			name: "union of keepLast and daily and monthly, overlaps counted once",
			items: []Item{at("a", "2026-06-15T10:00:00Z"), at("b", "2026-06-15T09:00:00Z"), at("c", "2026-06-15T08:00:00Z"),
				at("d", "2026-06-14T10:00:00Z"), at("e", "2026-06-14T09:00:00Z"), at("f", "2026-05-20T09:00:00Z"),
				at("g", "2026-05-19T09:00:00Z")},
			r:    v1.Retention{KeepLast: 2, Daily: 2, Monthly: 2},
			keep: []string{"a", "b", "d", "f"}, prn: []string{"c", "e", "g"},
		},
		{
			// 2026-03-29 has 23 hours in Berlin; 00:10 and 23:50 are one day.
			name: "Berlin spring-forward day is one day",
			items: []Item{at("30th-00:10", "2026-03-30T00:10:00+02:00"), at("29th-23:50", "2026-03-29T23:50:00+02:00"),
				at("29th-00:10", "2026-03-29T00:10:00+01:00"), at("28th-12:00", "2026-03-28T12:00:00+01:00")},
			r: v1.Retention{Daily: 3}, loc: berlin,
			keep: []string{"30th-00:10", "29th-23:50", "28th-12:00"}, prn: []string{"29th-00:10"},
		},
		{
			// 2026-10-25 has 25 hours in Berlin; 00:10 and 23:50 (24h40m apart) are one day.
			name: "Berlin fall-back day is one day",
			items: []Item{at("26th-00:10", "2026-10-26T00:10:00+01:00"), at("25th-23:50", "2026-10-25T23:50:00+01:00"),
				at("25th-00:10", "2026-10-25T00:10:00+02:00"), at("24th-23:50", "2026-10-24T23:50:00+02:00")},
			r: v1.Retention{Daily: 3}, loc: berlin,
			keep: []string{"26th-00:10", "25th-23:50", "24th-23:50"}, prn: []string{"25th-00:10"},
		},
		{
			name: "the same items read in UTC fall on two days",
			items: []Item{at("26th-00:10", "2026-10-26T00:10:00+01:00"), at("25th-23:50", "2026-10-25T23:50:00+01:00"),
				at("25th-00:10", "2026-10-25T00:10:00+02:00"), at("24th-23:50", "2026-10-24T23:50:00+02:00")},
			r: v1.Retention{Daily: 3}, loc: time.UTC,
			keep: []string{"26th-00:10", "25th-00:10"}, prn: []string{"25th-23:50", "24th-23:50"},
		},
		{
			name: "Berlin fall-back: the repeated 02:00 hour is two hours",
			items: []Item{at("02:40-CET", "2026-10-25T02:40:00+01:00"), at("02:10-CET", "2026-10-25T02:10:00+01:00"),
				at("02:40-CEST", "2026-10-25T02:40:00+02:00"), at("01:40", "2026-10-25T01:40:00+02:00")},
			r: v1.Retention{Hourly: 2}, loc: berlin,
			keep: []string{"02:40-CET", "02:40-CEST"}, prn: []string{"02:10-CET", "01:40"},
		},
		{
			name:  "pinned items are kept outside every bucket",
			items: []Item{ago("new", h), ago("mid", 2*h), pinned(ago("old", 100*day))},
			r:     v1.Retention{KeepLast: 1},
			keep:  []string{"new", "old"}, prn: []string{"mid"},
		},
		{
			name:  "maxAge prunes keepLast items older than it",
			items: []Item{ago("1h", h), ago("47h", 47*h), ago("48h", 48*h), ago("49h", 49*h), ago("100h", 100*h)},
			r:     v1.Retention{KeepLast: 10, MaxAge: maxAge(48 * h)},
			keep:  []string{"1h", "47h", "48h"}, prn: []string{"49h", "100h"},
		},
		{
			name:  "maxAge keeps the newest item and pinned ones",
			items: []Item{ago("5d", 5*day), ago("6d", 6*day), pinned(ago("7d", 7*day))},
			r:     v1.Retention{Daily: 10, MaxAge: maxAge(2 * day)},
			keep:  []string{"5d", "7d"}, prn: []string{"6d"},
		},
		{
			name:  "all-zero retention keeps everything",
			items: []Item{ago("a", h), ago("b", 2*h), ago("c", 300*day)},
			keep:  []string{"a", "b", "c"},
		},
		{
			name:  "all-zero retention still applies maxAge",
			items: []Item{ago("a", h), ago("b", 2*h), ago("c", 300*day)},
			r:     v1.Retention{MaxAge: maxAge(day)},
			keep:  []string{"a", "b"}, prn: []string{"c"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			keep, prune := Retain(c.items, c.r, now, c.loc)
			require.Equal(t, c.keep, keep, "keep")
			require.Equal(t, c.prn, prune, "prune")
		})
	}
}
