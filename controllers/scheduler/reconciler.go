package scheduler

import (
	"context"
	"errors"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/phases"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/policies"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=recurringsnapshots,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=recurringsnapshots/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=snapshots,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backups,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumes,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumes/finalizers,verbs=update
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumepolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=disasterrecoveryvolumes,verbs=get;list;watch

// Reconciler runs RecurringSnapshots: at each scheduled time it creates a
// Snapshot or Backup per volume (jittered, inside the windows, at most
// spec.concurrency in flight), prunes them by retention, and reports the
// runs in status and events. It runs in the leader-elected manager; all it
// remembers between reconciles is in the schedule's status and the objects'
// labels and annotations.
type Reconciler struct {
	client.Client
	// APIReader reads the schedule's own Snapshots and Backups uncached, so
	// an object created moments ago always counts against concurrency
	// (default the manager's API reader).
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	// Now is the clock (default time.Now); tests move it instead of waiting.
	Now func() time.Time
	// Stores opens backup targets to read the pins DR standbys of other
	// clusters hold; nil reads none.
	Stores *targets.Cache

	// accept, when set, limits the reconciler to the schedules it accepts
	// (tests run one reconciler per test on a shared manager).
	accept func(schedule string) bool
}

// scope is what one reconcile of a schedule works with.
type scope struct {
	rs    *v1.RecurringSnapshot
	now   time.Time
	sched *policies.Schedule
	// targets are the volumes the schedule applies to, by name; list is
	// them sorted by name.
	targets map[string]*v1.Volume
	list    []target
	// volumes is every Volume (pins read them).
	volumes []v1.Volume
	objs    *objectSet
	// plan places each target in the current run (status.lastScheduleTime).
	plan []volumeRun
	// fresh are results learned in this reconcile that have no object
	// (skipped or never started runs).
	fresh []v1.RunResult
	out   outcome
	// resumedAt is when spec.suspend was last cleared: runs due before it
	// were passed over and never start.
	resumedAt time.Time
	// committed runs once the status patch succeeded (metrics and events
	// that must not repeat when the patch is retried).
	committed []func()
}

func (s *scope) isStalled() bool { return s.out.stalled }

// conflictRetry is how soon a reconcile whose status write lost to a newer
// version looks again (the cache catches up within milliseconds).
const conflictRetry = 200 * time.Millisecond

// Reconcile follows the controller skeleton: get, deferred status patch,
// phases. The scheduler keeps no finalizer: deleting a schedule leaves its
// snapshots and backups where they are.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	rs := &v1.RecurringSnapshot{}
	if err := r.Get(ctx, req.NamespacedName, rs); err != nil {
		if apierrors.IsNotFound(err) {
			missedRuns.DeleteLabelValues(req.Name)
			rpo.set(req.Name, nil)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !rs.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	s := &scope{rs: rs, now: r.Now()}
	orig := rs.DeepCopy()
	defer func() {
		r.finishStatus(ctx, s, orig, err)
		if perr := r.patchStatus(ctx, orig, rs); perr != nil {
			if apierrors.IsConflict(perr) {
				// Decided on a stale copy (the cache had not seen the last
				// status yet): look again rather than count runs twice.
				res, err = ctrl.Result{RequeueAfter: conflictRetry}, nil
				return
			}
			err = errors.Join(err, perr)
			return
		}
		for _, f := range s.committed {
			f()
		}
	}()
	return phases.Run(ctx, s, (*scope).isStalled, r.parse, r.loadVolumes, r.loadObjects, r.advance, r.start, r.report, r.prune)
}

// patchStatus writes the status when it changed, only onto the version
// this reconcile read; a schedule deleted meanwhile is no error.
func (r *Reconciler) patchStatus(ctx context.Context, orig, rs *v1.RecurringSnapshot) error {
	if equality.Semantic.DeepEqual(orig.Status, rs.Status) {
		return nil
	}
	// Optimistic lock: metrics and events of a run are committed once,
	// by the reconcile whose status write lands on the version it read.
	return client.IgnoreNotFound(r.Status().Patch(ctx, rs, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})))
}

// parse reads the cron expression in its zone. The webhook refuses bad
// ones; one that got past it stalls the schedule until it is fixed.
func (r *Reconciler) parse(_ context.Context, s *scope) (ctrl.Result, error) {
	sched, err := policies.ParseSchedule(s.rs.Spec.Schedule, s.rs.Spec.TimeZone)
	if err != nil {
		s.out = outcome{stalled: true, reason: "InvalidSchedule", message: err.Error()}
		return ctrl.Result{}, reconcile.TerminalError(err)
	}
	s.sched = sched
	return ctrl.Result{}, nil
}

// loadObjects reads the schedule's Snapshots and Backups, uncached.
func (r *Reconciler) loadObjects(ctx context.Context, s *scope) (ctrl.Result, error) {
	sel := client.MatchingLabels{v1.LabelRecurringSnapshot: labelValue(s.rs.Name)}
	var snaps v1.SnapshotList
	if err := r.APIReader.List(ctx, &snaps, sel); err != nil {
		return ctrl.Result{}, err
	}
	var backups v1.BackupList
	if err := r.APIReader.List(ctx, &backups, sel); err != nil {
		return ctrl.Result{}, err
	}
	objs := make([]runObject, 0, len(snaps.Items)+len(backups.Items))
	for i := range snaps.Items {
		objs = append(objs, fromSnapshot(&snaps.Items[i]))
	}
	for i := range backups.Items {
		objs = append(objs, fromBackup(&backups.Items[i]))
	}
	s.objs = newObjectSet(objs)
	return ctrl.Result{}, nil
}

// advance moves the schedule to the run that is due, if any: a run missed
// while the manager was down runs once (the latest), and the ones before it
// are counted. While suspended, due runs are passed over without starting,
// so resuming never replays them.
func (r *Reconciler) advance(ctx context.Context, s *scope) (ctrl.Result, error) {
	st := &s.rs.Status
	cursor := s.rs.CreationTimestamp.Time
	if st.LastScheduleTime != nil {
		cursor = st.LastScheduleTime.Time
	}
	s.resumedAt = trackSuspension(st, s.rs.Spec.Suspend, s.now, s.rs.Generation)
	run, missed, due := dueRun(s.sched, cursor, s.now)
	if due && s.rs.Spec.Suspend {
		st.LastScheduleTime = timePtr(run)
	} else if due {
		r.startRun(ctx, s, run, missed)
	}
	next := s.nextRun()
	if s.rs.Spec.Suspend || st.LastScheduleTime == nil {
		return requeueAt(s.now, next), nil
	}
	s.plan = s.planFor(st.LastScheduleTime.Time)
	return requeueAt(s.now, nextWake(next, s.plan)), nil
}

// planFor places the targets in the run scheduled at run.
func (s *scope) planFor(run time.Time) []volumeRun {
	return planRun(&s.rs.Spec, s.rs.Name, s.sched.Location(), run, s.now, s.list, s.objs.has)
}

// passedOver reports whether the run at run came due while the schedule
// was suspended.
func (s *scope) passedOver(run time.Time) bool {
	return s.rs.Spec.Suspend || run.Before(s.resumedAt)
}

// nextRun is the first activation after now (and after the cursor).
func (s *scope) nextRun() time.Time {
	from := s.now
	if c := s.rs.CreationTimestamp.Time; c.After(from) {
		from = c
	}
	if l := s.rs.Status.LastScheduleTime; l != nil && l.After(from) {
		from = l.Time
	}
	return s.sched.Next(from)
}

// startRun makes run the current one: it reports the previous run's
// volumes that never started, the runs missed before this one, and the
// volumes whose start falls outside the windows.
func (r *Reconciler) startRun(ctx context.Context, s *scope, run time.Time, missed int) {
	st := &s.rs.Status
	if st.LastScheduleTime != nil {
		r.reportNotStarted(ctx, s, st.LastScheduleTime.Time)
	}
	st.LastScheduleTime = timePtr(run)
	logger := log.FromContext(ctx).WithValues("run", run.UTC())
	logger.Info("Run due", "volumes", len(s.list), "missed", missed)
	if missed > 0 {
		s.committed = append(s.committed, func() {
			missedRuns.WithLabelValues(s.rs.Name).Add(float64(missed))
			r.warn(s.rs, "MissedRuns", "%d runs before %s were missed while the manager was down; running the latest once", missed, stamp(run))
		})
	}
	var out []string
	for _, t := range s.list {
		start := volumeStart(&s.rs.Spec, s.rs.Name, t.name, run)
		if !t.created.After(start) && !policies.InWindow(s.rs.Spec.Windows, start, s.sched.Location()) {
			out = append(out, t.name)
		}
	}
	if len(out) > 0 {
		logger.Info("Run skipped on volumes outside the windows", "volumes", out)
		s.committed = append(s.committed, func() {
			r.normal(s.rs, "RunSkipped", "run %s skipped on %d volumes whose start falls outside the windows: %s", stamp(run), len(out), list(out))
		})
	}
}

// reportNotStarted records the volumes of the previous run that never got
// a concurrency slot before this run came due (unless that run was passed
// over while suspended).
func (r *Reconciler) reportNotStarted(ctx context.Context, s *scope, prev time.Time) {
	if s.passedOver(prev) {
		return
	}
	var missing []string
	var results []v1.RunResult
	for _, vr := range s.planFor(prev) {
		switch vr.state {
		case pending, waiting:
			missing = append(missing, vr.volume)
			results = append(results, v1.RunResult{Volume: vr.volume, ScheduledTime: metaTime(vr.start),
				Message: "not started: the next run came due before a concurrency slot was free"})
		}
	}
	if len(missing) == 0 {
		return
	}
	s.fresh = append(s.fresh, results...)
	log.FromContext(ctx).Info("Run did not start on every volume", "run", prev.UTC(), "volumes", missing)
	s.committed = append(s.committed, func() {
		r.warn(s.rs, "RunNotStarted", "run %s did not start on %d volumes before the next run (concurrency %d): %s",
			stamp(prev), len(missing), s.rs.Spec.Concurrency, list(missing))
	})
}

// start creates the objects of the current run's due volumes while fewer
// than spec.concurrency of the schedule's objects are in flight, and
// records the volumes skipped by the windows.
func (r *Reconciler) start(ctx context.Context, s *scope) (ctrl.Result, error) {
	if s.rs.Spec.Suspend || s.rs.Status.LastScheduleTime == nil || s.passedOver(s.rs.Status.LastScheduleTime.Time) {
		return ctrl.Result{}, nil
	}
	run := s.rs.Status.LastScheduleTime.Time
	slots := int(max(s.rs.Spec.Concurrency, 1)) - s.objs.inFlight()
	for _, vr := range s.plan {
		switch {
		case vr.state == skipped:
			s.fresh = append(s.fresh, v1.RunResult{Volume: vr.volume, ScheduledTime: metaTime(vr.start),
				Message: "skipped: the start " + stamp(vr.start) + " is outside the schedule's windows"})
		case vr.state == pending && slots > 0:
			if err := r.create(ctx, s, s.targets[vr.volume], run); err != nil {
				return ctrl.Result{}, err
			}
			slots--
		}
	}
	return ctrl.Result{}, nil
}

func requeueAt(now, t time.Time) ctrl.Result {
	if t.IsZero() || !t.After(now) {
		return ctrl.Result{}
	}
	return ctrl.Result{RequeueAfter: t.Sub(now)}
}
