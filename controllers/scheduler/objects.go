package scheduler

import (
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// Backup states the backup executor writes.
const (
	backupCompleted = "Completed"
	backupFailed    = "Failed"
)

// reportedFailed is the v1.AnnotationRunReported value of an object whose
// failure was reported.
const reportedFailed = "Failed"

// maxReason bounds the failure reason quoted in results and events (an
// event's note holds at most 1 KiB).
const maxReason = 512

// objState is how far an executor got with a Snapshot or Backup.
type objState int

const (
	inFlight objState = iota
	done
	failed
)

// runObject is a Snapshot or Backup a run created, as the scheduler reads it.
type runObject struct {
	obj    client.Object
	kind   string
	volume string
	// run is the scheduled (pre-jitter) time of the run that created it.
	run   time.Time
	state objState
	// completed is when it was taken, for retention.
	completed time.Time
	// message explains a failure.
	message string
	// backupID is a Backup's id in its target.
	backupID string
	// snapshotName is the Snapshot a Backup reads.
	snapshotName string
}

// deleting reports whether the object is being deleted.
func (o *runObject) deleting() bool { return !o.obj.GetDeletionTimestamp().IsZero() }

// fromSnapshot reads a Snapshot: done when readyToUse, failed while Stalled.
func fromSnapshot(s *v1.Snapshot) runObject {
	o := runObject{obj: s, kind: "Snapshot", volume: s.Spec.VolumeName, run: runTime(s), completed: timeOr(s.Status.CreationTime, s.CreationTimestamp)}
	stalled := meta.FindStatusCondition(s.Status.Conditions, v1.ConditionStalled)
	switch {
	case s.Status.ReadyToUse:
		o.state = done
	case stalled != nil && stalled.Status == metav1.ConditionTrue:
		o.state, o.message = failed, truncate(stalled.Message, maxReason)
	}
	return o
}

// fromBackup reads a Backup: done when Completed, failed when Failed.
func fromBackup(b *v1.Backup) runObject {
	o := runObject{obj: b, kind: "Backup", volume: b.Spec.VolumeName, run: runTime(b), completed: timeOr(b.Status.CreationTime, b.CreationTimestamp),
		backupID: b.Status.BackupID, snapshotName: b.Spec.SnapshotName}
	switch b.Status.State {
	case backupCompleted:
		o.state = done
	case backupFailed:
		o.state, o.message = failed, truncate(failureMessage(b.Status.Conditions), maxReason)
	}
	return o
}

// failureMessage is the message of the Stalled or Ready condition that
// explains a failed backup.
func failureMessage(conds []metav1.Condition) string {
	for _, t := range []string{v1.ConditionStalled, v1.ConditionReady} {
		if c := meta.FindStatusCondition(conds, t); c != nil && c.Message != "" {
			return c.Message
		}
	}
	return "backup failed"
}

// runTime is the run recorded in the object's v1.AnnotationScheduledTime,
// or its creation time when that is missing.
func runTime(o client.Object) time.Time {
	if t, err := time.Parse(time.RFC3339, o.GetAnnotations()[v1.AnnotationScheduledTime]); err == nil {
		return t
	}
	return o.GetCreationTimestamp().Time
}

func timeOr(t *metav1.Time, fallback metav1.Time) time.Time {
	if t != nil && !t.IsZero() {
		return t.Time
	}
	return fallback.Time
}

// objectSet is a schedule's objects, indexed by volume and run.
type objectSet struct {
	all []runObject
	// byRun maps volume and run (Unix seconds) to the object.
	byRun map[runKey]*runObject
}

type runKey struct {
	volume string
	run    int64
}

func newObjectSet(objs []runObject) *objectSet {
	s := &objectSet{all: objs}
	s.index()
	return s
}

// add records an object created in this reconcile.
func (s *objectSet) add(o runObject) {
	s.all = append(s.all, o)
	s.index()
}

// index rebuilds byRun (append may have moved the objects).
func (s *objectSet) index() {
	s.byRun = make(map[runKey]*runObject, len(s.all))
	for i := range s.all {
		s.byRun[runKey{s.all[i].volume, s.all[i].run.Unix()}] = &s.all[i]
	}
}

// has reports whether the run scheduled at run has an object for volume.
func (s *objectSet) has(volume string, run time.Time) bool {
	_, ok := s.byRun[runKey{volume, run.Unix()}]
	return ok
}

// inFlight counts the objects neither done nor failed (and not being deleted).
func (s *objectSet) inFlight() int {
	n := 0
	for i := range s.all {
		if s.all[i].state == inFlight && !s.all[i].deleting() {
			n++
		}
	}
	return n
}
