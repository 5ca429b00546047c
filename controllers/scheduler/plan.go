package scheduler

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/policies"
)

// maxMissedCount bounds how many missed activations countMissed walks: a
// minutely schedule down for a year stops counting there.
const maxMissedCount = 100000

// dueRun returns the run (scheduled time, before jitter) to start now: the
// latest activation in (cursor, now], however many fell in that span, and
// how many activations before it in the span were missed. ok is false when
// no activation is due.
func dueRun(s *policies.Schedule, cursor, now time.Time) (run time.Time, missed int, ok bool) {
	run, ok = policies.MissedRun(s, cursor, now)
	if !ok {
		return time.Time{}, 0, false
	}
	return run, countMissed(s, cursor, run), true
}

// countMissed counts the activations strictly between cursor and run.
func countMissed(s *policies.Schedule, cursor, run time.Time) int {
	n := 0
	for t := s.Next(cursor); !t.IsZero() && t.Before(run) && n < maxMissedCount; t = s.Next(t) {
		n++
	}
	return n
}

// volumeStart is when the run scheduled at run starts on a volume: the
// scheduled time plus the volume's deterministic jitter.
func volumeStart(spec *v1.RecurringSnapshotSpec, schedule, volume string, run time.Time) time.Time {
	var jitter time.Duration
	if spec.Jitter != nil {
		jitter = spec.Jitter.Duration
	}
	return run.Add(policies.JitterOffset(volume, schedule, jitter))
}

// target is a volume the schedule applies to.
type target struct {
	name    string
	created time.Time
}

// volumeState is where one volume is in a run.
type volumeState int

const (
	// waiting: its jittered start is still ahead.
	waiting volumeState = iota
	// skipped: its jittered start falls outside the schedule's windows.
	skipped
	// started: its object for the run exists.
	started
	// pending: due, allowed, and not started (waiting for a concurrency slot).
	pending
	// excluded: the volume was created after its start; its first run is
	// the next one.
	excluded
)

// volumeRun is one volume's part of a run.
type volumeRun struct {
	volume string
	start  time.Time
	state  volumeState
}

// planRun places every target volume in the run scheduled at run. Pending
// volumes come first, by start time then name: the order in which they
// take free concurrency slots.
func planRun(spec *v1.RecurringSnapshotSpec, schedule string, loc *time.Location, run, now time.Time,
	targets []target, has func(volume string, run time.Time) bool) []volumeRun {
	out := make([]volumeRun, 0, len(targets))
	for _, t := range targets {
		vr := volumeRun{volume: t.name, start: volumeStart(spec, schedule, t.name, run)}
		switch {
		case has(t.name, run):
			vr.state = started
		case t.created.After(vr.start):
			vr.state = excluded
		case vr.start.After(now):
			vr.state = waiting
		case !policies.InWindow(spec.Windows, vr.start, loc):
			vr.state = skipped
		default:
			vr.state = pending
		}
		out = append(out, vr)
	}
	slices.SortStableFunc(out, func(a, b volumeRun) int {
		return cmp.Or(cmp.Compare(rank(a.state), rank(b.state)), a.start.Compare(b.start), cmp.Compare(a.volume, b.volume))
	})
	return out
}

// rank orders pending volumes first.
func rank(s volumeState) int {
	if s == pending {
		return 0
	}
	return 1
}

// nextWake is the earliest of the next run and the jittered starts still
// ahead in the current run; zero when there is none.
func nextWake(next time.Time, plan []volumeRun) time.Time {
	wake := next
	for _, vr := range plan {
		if vr.state == waiting && (wake.IsZero() || vr.start.Before(wake)) {
			wake = vr.start
		}
	}
	return wake
}

// maxNameLen is the longest object name: a DNS subdomain.
const maxNameLen = validation.DNS1123SubdomainMaxLength

// objectName is the deterministic name of the Snapshot or Backup that the
// run scheduled at run creates for volume: SCHEDULE-VOLUME-YYYYMMDDHHMM
// (UTC). When that is too long, or hashed is set (the plain name is taken
// by another schedule's object, as "a-b"+"c" and "a"+"b-c" collide), both
// parts are shortened as needed and a hash of the pair is appended.
func objectName(schedule, volume string, run time.Time, hashed bool) string {
	stamp := run.UTC().Format("200601021504")
	plain := schedule + "-" + volume + "-" + stamp
	if !hashed && len(plain) <= maxNameLen {
		return plain
	}
	sum := sha256.Sum256([]byte(schedule + "/" + volume))
	suffix := hex.EncodeToString(sum[:5])
	room := maxNameLen - len(stamp) - len(suffix) - 3
	a := min(len(schedule), room/2)
	b := min(len(volume), room-a)
	a = min(len(schedule), room-b)
	return trimPart(schedule[:a]) + "-" + trimPart(volume[:b]) + "-" + stamp + "-" + suffix
}

// trimPart drops the separators a cut may leave at the end of a name part.
func trimPart(s string) string {
	return strings.TrimRight(s, "-.")
}

// labelValue is name as a label value: itself when valid, else "h-" and a
// hash (names may be longer than the 63 characters a label value allows).
func labelValue(name string) string {
	if len(validation.IsValidLabelValue(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(sum[:16])
}
