package policies

import (
	"cmp"
	"slices"
	"time"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// Item is one snapshot or backup a schedule made, as retention sees it.
type Item struct {
	Name string
	Time time.Time
	// Pinned items (needed by a DR volume or a running restore) are never pruned.
	Pinned bool
}

// Retain splits items into the names to keep and the names to prune.
//
// Items are ordered newest first, equal times by name. The kept set is the
// union of:
//   - the first keepLast items;
//   - for each GFS class (hourly, daily, weekly, monthly, yearly) with count
//     N > 0, the newest item of each of the N most recent periods of that
//     class that contain an item (periods without items are skipped, so a
//     pause in the schedule does not empty the buckets). Periods are read in
//     loc (nil means UTC): a day is a calendar day there, so 23- and 25-hour
//     DST days are one day each; weeks are ISO weeks starting Monday; an hour
//     is a wall-clock hour with its UTC offset, so the hour repeated when
//     clocks fall back counts as two hours.
//
// maxAge (when above zero) then prunes every kept item older than
// now-maxAge, including keepLast and GFS picks, except the newest item. Pinned
// items are always kept, whatever their age or bucket.
//
// A retention whose counts are all zero (the API refuses it) keeps every item
// rather than none; maxAge still applies. Both lists are newest first.
func Retain(items []Item, r v1.Retention, now time.Time, loc *time.Location) (keep, prune []string) {
	if loc == nil {
		loc = time.UTC
	}
	sorted := slices.Clone(items)
	slices.SortStableFunc(sorted, func(a, b Item) int {
		return cmp.Or(b.Time.Compare(a.Time), cmp.Compare(a.Name, b.Name))
	})
	kept := selectKept(sorted, r, loc)
	if r.MaxAge != nil && r.MaxAge.Duration > 0 {
		cutoff := now.Add(-r.MaxAge.Duration)
		for i := 1; i < len(sorted); i++ {
			kept[i] = kept[i] && !sorted[i].Time.Before(cutoff)
		}
	}
	for i, it := range sorted {
		if kept[i] || it.Pinned {
			keep = append(keep, it.Name)
		} else {
			prune = append(prune, it.Name)
		}
	}
	return keep, prune
}

// selectKept marks the keepLast and GFS picks in newest-first items; with
// all counts zero it marks everything.
func selectKept(sorted []Item, r v1.Retention, loc *time.Location) []bool {
	kept := make([]bool, len(sorted))
	if r.KeepLast+r.Hourly+r.Daily+r.Weekly+r.Monthly+r.Yearly <= 0 {
		for i := range kept {
			kept[i] = true
		}
		return kept
	}
	for i := 0; i < len(sorted) && i < int(r.KeepLast); i++ {
		kept[i] = true
	}
	for _, c := range []struct {
		n   int32
		key func(time.Time) period
	}{
		{r.Hourly, hourOf}, {r.Daily, dayOf}, {r.Weekly, weekOf}, {r.Monthly, monthOf}, {r.Yearly, yearOf},
	} {
		markNewestPerPeriod(sorted, kept, int(c.n), loc, c.key)
	}
	return kept
}

// period identifies one hour, day, week, month or year in a time zone.
type period struct{ a, b, c, d int }

func hourOf(t time.Time) period {
	_, off := t.Zone()
	return period{t.Year(), t.YearDay(), t.Hour(), off}
}
func dayOf(t time.Time) period   { return period{a: t.Year(), b: t.YearDay()} }
func monthOf(t time.Time) period { return period{a: t.Year(), b: int(t.Month())} }
func yearOf(t time.Time) period  { return period{a: t.Year()} }
func weekOf(t time.Time) period {
	y, w := t.ISOWeek()
	return period{a: y, b: w}
}

// markNewestPerPeriod marks the first (newest) item of each of the first n
// distinct periods in newest-first items. A period is a contiguous span of
// time, so its items are adjacent.
func markNewestPerPeriod(sorted []Item, kept []bool, n int, loc *time.Location, key func(time.Time) period) {
	var last period
	for i := 0; i < len(sorted) && n > 0; i++ {
		p := key(sorted[i].Time.In(loc))
		if i > 0 && p == last {
			continue
		}
		kept[i], last = true, p
		n--
	}
}
