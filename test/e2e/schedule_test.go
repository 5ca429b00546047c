package e2e

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/controllers/scheduler"
	"github.com/cairnstore/cairn/engine/backupstore"
	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/policies"
)

// clock is the injected clock of the test's scheduler.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// TestScheduledRuns: a policy lists an hourly snapshot schedule and a
// nightly backup schedule; the scheduler runs with an injected clock (the
// dev manager has none), the real node agents take the snapshots (also of a
// detached volume) and run the backups to versitygw; retention keeps the
// two newest snapshots per volume; the nightly backup restores byte for
// byte into a new Volume.
func TestScheduledRuns(t *testing.T) {
	t.Parallel()
	clk := &clock{now: time.Now()}
	startScheduler(t, clk)
	srv := testutil.StartS3(t)
	target := newTarget(t, "e2e-sched-s3", srv)
	berlin, err := time.LoadLocation("Europe/Berlin")
	require.NoError(t, err)
	pol := createPolicy(t, "e2e-sched", "sched", 2)
	patchPolicy(t, pol.Name, func(p *v1.VolumePolicy) { p.Spec.RecurringSnapshots = []v1.ObjectName{"e2e-hourly", "e2e-nightly"} })
	vols.Create(t, "e2e-sched-a", "sched", "64Mi")
	vols.Create(t, "e2e-sched-b", "sched", "64Mi")
	vols.WaitHealthy(t, "e2e-sched-b", v1.VolumeDetached, 2)
	dev := vols.Attach(t, "e2e-sched-a", "dev-node-2", 2)
	fioJob{offset: "0", size: "8m"}.write(t, dev)

	hourly := createSchedule(t, "e2e-hourly", v1.RecurringSnapshotSpec{Schedule: "0 * * * *", TimeZone: "Europe/Berlin",
		Action: v1.ActionSnapshot, Retention: &v1.Retention{KeepLast: 2}, Concurrency: 1})
	// The first hourly run after the schedule's creation (an hour may have
	// begun since the clock was started).
	next := getSchedule(t, hourly.Name).CreationTimestamp.Truncate(time.Hour).Add(time.Hour + time.Second)
	// The nightly run is half a day away from the hourly runs: the scheduler
	// looks at every schedule whenever a volume changes, so a nightly time
	// inside the four hours below would start a run before the test's first
	// night (the test used to fail when run between 21:30 and 00:30 UTC).
	nightlyCron := fmt.Sprintf("30 %d * * *", (next.In(berlin).Hour()+12)%24)
	nightly := createSchedule(t, "e2e-nightly", v1.RecurringSnapshotSpec{Schedule: nightlyCron, TimeZone: "Europe/Berlin",
		Action: v1.ActionBackup, BackupTargetRef: v1.ObjectName(target.Name), Retention: &v1.Retention{KeepLast: 2}})

	// Four hourly runs, one at a time: each snapshots both volumes.
	for i := range 4 {
		advance(t, clk, next.Add(time.Duration(i)*time.Hour), hourly)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			snaps := scheduledSnapshots(c, hourly.Name)
			assert.Len(c, snaps, min(2*(i+1), 4), "two volumes, keepLast 2")
			for _, s := range snaps {
				assert.True(c, s.Status.ReadyToUse, "snapshot %s not taken", s.Name)
			}
			st := getSchedule(c, hourly.Name).Status
			if assert.NotNil(c, st.LastSuccessfulTime) {
				assert.True(c, !st.LastSuccessfulTime.Time.Before(next.Add(time.Duration(i)*time.Hour).Truncate(time.Hour)))
			}
		}, wait, tick)
	}
	// keepLast 2: each volume keeps the snapshots of the last two runs.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		snaps := scheduledSnapshots(c, hourly.Name)
		perVolume := map[string]int{}
		for _, s := range snaps {
			perVolume[s.Spec.VolumeName]++
		}
		assert.Equal(c, map[string]int{"e2e-sched-a": 2, "e2e-sched-b": 2}, perVolume)
	}, wait, tick)

	// Three nightly backups, keepLast 2: the two newest of each volume
	// remain, in the cluster and in the target; the newest restores byte
	// for byte (the volume is quiet).
	sum := deviceSum(t, dev)
	sched, err := policies.ParseSchedule(nightlyCron, "Europe/Berlin")
	require.NoError(t, err)
	night := clk.Now()
	var backupID string
	for n := 1; n <= 3; n++ {
		night = sched.Next(night)
		at := night.Add(time.Second)
		advance(t, clk, at, nightly, hourly)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			st := getSchedule(c, nightly.Name).Status
			if assert.NotNil(c, st.LastSuccessfulTime) {
				assert.True(c, !st.LastSuccessfulTime.Time.Before(at.Add(-time.Second)), "run of night %d not done", n)
			}
			ids := scheduledBackups(c, nightly.Name, "e2e-sched-a")
			assert.Len(c, ids, min(n, 2))
			if len(ids) > 0 {
				backupID = ids[len(ids)-1]
			}
		}, wait, tick)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, vol := range []string{"e2e-sched-a", "e2e-sched-b"} {
			ids := scheduledBackups(c, nightly.Name, vol)
			assert.Len(c, ids, 2, "backups of %s in the cluster", vol)
			assert.ElementsMatch(c, ids, targetBackups(c, srv, vol), "backups of %s in the target", vol)
		}
	}, wait, tick)
	restored := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "e2e-sched-restored", Labels: map[string]string{"app": "sched-restore"}}}
	restored.Spec.Size = resource.MustParse("64Mi")
	restored.Spec.Replicas = ptr.To(int32(1))
	restored.Spec.FromBackup = &v1.BackupSource{BackupTargetRef: v1.ObjectName(target.Name), Volume: "e2e-sched-a", Backup: backupID}
	require.NoError(t, k8s.Create(bg, restored))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, meta.IsStatusConditionTrue(vols.Get(c, restored.Name).Status.Conditions, v1.ConditionRestored))
	}, wait, tick)
	rdev := vols.Attach(t, restored.Name, "dev-node-4", 1)
	assert.Equal(t, sum, deviceSum(t, rdev), "the nightly backup does not restore to the volume's content")
}

// startScheduler runs the scheduler, and nothing else, against the dev
// cluster with the test's clock.
func startScheduler(t *testing.T, clk *clock) {
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{Scheme: controllers.NewScheme(), Logger: logr.Discard(),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	require.NoError(t, err)
	r := &scheduler.Reconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("cairn-scheduler"), Now: clk.Now}
	require.NoError(t, r.SetupWithManager(mgr))
	done := make(chan error, 1)
	go func() { done <- mgr.Start(t.Context()) }()
	t.Cleanup(func() { <-done })
}

// advance sets the clock and pokes the schedules with an annotation (as
// `kubectl annotate` would) so the scheduler looks at the new time now.
func advance(t *testing.T, clk *clock, to time.Time, schedules ...*v1.RecurringSnapshot) {
	t.Helper()
	clk.mu.Lock()
	clk.now = to
	clk.mu.Unlock()
	for _, rs := range schedules {
		patch := []byte(`{"metadata":{"annotations":{"test.cairn.dev/poke":"` + strconv.FormatInt(to.Unix(), 10) + `"}}}`)
		require.NoError(t, k8s.Patch(bg, &v1.RecurringSnapshot{ObjectMeta: metav1.ObjectMeta{Name: rs.Name}}, client.RawPatch("application/merge-patch+json", patch)))
	}
}

func createSchedule(t *testing.T, name string, spec v1.RecurringSnapshotSpec) *v1.RecurringSnapshot {
	t.Helper()
	rs := &v1.RecurringSnapshot{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
	require.NoError(t, k8s.Create(bg, rs))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got := getSchedule(c, name)
		assert.Equal(c, got.Generation, got.Status.ObservedGeneration)
		assert.Equal(c, int32(2), got.Status.VolumeCount)
	}, wait, tick)
	return rs
}

func getSchedule(c assert.TestingT, name string) *v1.RecurringSnapshot {
	rs := &v1.RecurringSnapshot{}
	assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: name}, rs))
	return rs
}

func scheduledSnapshots(c assert.TestingT, schedule string) []v1.Snapshot {
	var list v1.SnapshotList
	assert.NoError(c, k8s.List(bg, &list, client.MatchingLabels{v1.LabelRecurringSnapshot: schedule}))
	items := slices.DeleteFunc(list.Items, func(s v1.Snapshot) bool { return !s.DeletionTimestamp.IsZero() })
	return items
}

// scheduledBackups lists the IDs of the schedule's completed backups of
// vol, oldest first.
func scheduledBackups(c assert.TestingT, schedule, vol string) []string {
	var list v1.BackupList
	assert.NoError(c, k8s.List(bg, &list, client.MatchingLabels{v1.LabelRecurringSnapshot: schedule, v1.LabelVolume: vol}))
	slices.SortFunc(list.Items, func(a, b v1.Backup) int { return a.CreationTimestamp.Compare(b.CreationTimestamp.Time) })
	var ids []string
	for _, b := range list.Items {
		if b.Status.State == "Completed" && b.DeletionTimestamp.IsZero() {
			ids = append(ids, b.Status.BackupID)
		}
	}
	return ids
}

// targetBackups lists the IDs of vol's backups in srv's e2e prefix.
func targetBackups(c assert.TestingT, srv *testutil.S3Server, vol string) []string {
	o := backupstore.Options{ReadOnly: true}
	o.Endpoint, o.Region, o.AccessKeyID, o.SecretAccessKey = srv.Endpoint, srv.Region, srv.AccessKey, srv.SecretKey
	store, err := backupstore.Open(bg, srv.URL("e2e"), o)
	if !assert.NoError(c, err) {
		return nil
	}
	list, err := store.List(bg, vol)
	assert.NoError(c, err)
	var ids []string
	for _, b := range list {
		ids = append(ids, b.ID)
	}
	return ids
}
