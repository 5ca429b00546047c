package policies

import (
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestRetainOverYears runs a schedule every 11 hours for two and a half
// years (DST switches in a northern and a southern zone, the leap day of
// 2028, every month end), prunes after each run as the scheduler does, and
// checks after every run that exactly the items the GFS definition keeps
// over the whole history are left: the newest keepLast, and the newest item
// of each of the last N local days, ISO weeks, months and years that had
// runs.
func TestRetainOverYears(t *testing.T) {
	r := v1.Retention{KeepLast: 3, Daily: 7, Weekly: 4, Monthly: 12, Yearly: 3}
	for _, zone := range []string{"Europe/Berlin", "Australia/Sydney"} {
		t.Run(zone, func(t *testing.T) {
			t.Parallel()
			loc, err := time.LoadLocation(zone)
			require.NoError(t, err)
			var all, kept []Item
			start := time.Date(2027, 9, 30, 22, 17, 0, 0, time.UTC)
			for now := start; now.Before(time.Date(2030, 3, 31, 0, 0, 0, 0, time.UTC)); now = now.Add(11 * time.Hour) {
				it := Item{Name: now.Format(time.RFC3339), Time: now}
				all = append(all, it)
				keep, _ := Retain(append(kept, it), r, now, loc)
				kept = kept[:0]
				for _, name := range keep {
					ts, err := time.Parse(time.RFC3339, name)
					require.NoError(t, err)
					kept = append(kept, Item{Name: name, Time: ts})
				}
				want := gfsOracle(all, r, loc)
				got := slices.Clone(keep)
				sort.Strings(got)
				require.Equal(t, want, got, "after the run at %s (%s)", now.In(loc), zone)
			}
		})
	}
}

// gfsOracle is the retention definition applied to the whole history.
func gfsOracle(all []Item, r v1.Retention, loc *time.Location) []string {
	byTime := slices.Clone(all)
	sort.Slice(byTime, func(i, j int) bool { return byTime[i].Time.After(byTime[j].Time) })
	keep := map[string]bool{}
	for i := 0; i < int(r.KeepLast) && i < len(byTime); i++ {
		keep[byTime[i].Name] = true
	}
	buckets := []struct {
		n   int32
		key func(time.Time) string
	}{
		{r.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{r.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{r.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
		{r.Yearly, func(t time.Time) string { return t.Format("2006") }},
	}
	for _, b := range buckets {
		seen := map[string]bool{}
		for _, it := range byTime {
			k := b.key(it.Time.In(loc))
			if seen[k] || len(seen) == int(b.n) {
				continue
			}
			seen[k] = true
			keep[it.Name] = true
		}
	}
	out := make([]string, 0, len(keep))
	for k := range keep {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
