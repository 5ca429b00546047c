package scheduler

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/testutil"
)

// The suite runs a real kube-apiserver and etcd and one manager with the
// webhook. Each test adds its own scheduler to that manager, limited to the
// schedules named with the test's prefix and driven by the test's own
// clock, so parallel tests never move each other's time. No executors run:
// the tests play them by patching Snapshot and Backup status.
var (
	k8s client.WithWatch
	mgr ctrl.Manager
)

// wait bounds how long a test waits for the scheduler to react (the
// machine may be busy; nothing here waits for a cron time).
const wait = 60 * time.Second

func TestMain(m *testing.M) {
	os.Exit(testutil.RunEnvtest(m, "scheduler suite", testutil.EnvtestOptions{
		Ready: func(_ context.Context, env *testutil.Envtest) error {
			k8s, mgr = env.Client, env.Manager
			return nil
		},
	}))
}

// fakeClock is a test's clock; only the test moves it.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// harness is one test's scheduler, clock and objects.
type harness struct {
	t      *testing.T
	ctx    context.Context
	prefix string
	clock  *fakeClock
	pokes  atomic.Int64
}

// harnesses numbers the harnesses, so that -count=N runs use fresh names.
var harnesses atomic.Int64

// newHarness starts a scheduler on the shared manager for the schedules
// named prefixN-*, with a clock starting at the wall-clock time (schedules'
// creation times come from the API server's clock).
func newHarness(t *testing.T, prefix string) *harness {
	t.Parallel()
	prefix += strconv.FormatInt(harnesses.Add(1), 10)
	h := &harness{t: t, ctx: t.Context(), prefix: prefix, clock: &fakeClock{now: time.Now()}}
	r := &Reconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("cairn-scheduler"), Now: h.clock.Now}
	require.NoError(t, r.setup(mgr, "recurringsnapshot-"+prefix, func(name string) bool {
		return strings.HasPrefix(name, prefix+"-")
	}))
	return h
}

func (h *harness) name(s string) string { return h.prefix + "-" + s }

// volume creates a Volume with the given labels.
func (h *harness) volume(name string, labels map[string]string) *v1.Volume {
	vol := &v1.Volume{
		ObjectMeta: metav1.ObjectMeta{Name: h.name(name), Labels: labels},
		Spec:       v1.VolumeSpec{Size: resource.MustParse("1Gi")},
	}
	require.NoError(h.t, k8s.Create(h.ctx, vol))
	return vol
}

// selectAll is the label every volume of a test carries, and the selector
// that picks them.
func (h *harness) selectAll() (map[string]string, *metav1.LabelSelector) {
	l := map[string]string{"test": h.prefix}
	return l, &metav1.LabelSelector{MatchLabels: l}
}

// schedule creates a RecurringSnapshot and waits for its first reconcile.
func (h *harness) schedule(name string, spec v1.RecurringSnapshotSpec) *v1.RecurringSnapshot {
	rs := &v1.RecurringSnapshot{ObjectMeta: metav1.ObjectMeta{Name: h.name(name)}, Spec: spec}
	require.NoError(h.t, k8s.Create(h.ctx, rs))
	h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) {
		assert.Equal(c, rs.Generation, st.ObservedGeneration)
	})
	return rs
}

// advance sets the clock and pokes the schedules (a user's annotation, as
// `kubectl annotate` would) so the scheduler looks at the new time now
// rather than when its wall-clock requeue fires.
func (h *harness) advance(to time.Time, schedules ...*v1.RecurringSnapshot) {
	h.clock.set(to)
	n := strconv.FormatInt(h.pokes.Add(1), 10)
	for _, rs := range schedules {
		patch := []byte(`{"metadata":{"annotations":{"test.cairn.dev/poke":"` + n + `"}}}`)
		require.NoError(h.t, k8s.Patch(h.ctx, &v1.RecurringSnapshot{ObjectMeta: metav1.ObjectMeta{Name: rs.Name}}, client.RawPatch("application/merge-patch+json", patch)))
	}
}

// waitStatus waits until check passes on the schedule's status.
func (h *harness) waitStatus(rs *v1.RecurringSnapshot, check func(*assert.CollectT, v1.RecurringSnapshotStatus)) v1.RecurringSnapshotStatus {
	h.t.Helper()
	var st v1.RecurringSnapshotStatus
	require.EventuallyWithT(h.t, func(c *assert.CollectT) {
		cur := &v1.RecurringSnapshot{}
		if !assert.NoError(c, k8s.Get(h.ctx, client.ObjectKeyFromObject(rs), cur)) {
			return
		}
		st = cur.Status
		check(c, st)
	}, wait, 20*time.Millisecond)
	return st
}

// waitRun waits until the schedule's current run is run.
func (h *harness) waitRun(rs *v1.RecurringSnapshot, run time.Time) v1.RecurringSnapshotStatus {
	h.t.Helper()
	return h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) {
		if assert.NotNil(c, st.LastScheduleTime) {
			assert.True(c, st.LastScheduleTime.Time.Equal(run), "lastScheduleTime %s, want %s", st.LastScheduleTime, run)
		}
	})
}

func (h *harness) snapshots(rs *v1.RecurringSnapshot) []v1.Snapshot {
	var list v1.SnapshotList
	require.NoError(h.t, k8s.List(h.ctx, &list, client.MatchingLabels{v1.LabelRecurringSnapshot: rs.Name}))
	return list.Items
}

func (h *harness) backups(rs *v1.RecurringSnapshot) []v1.Backup {
	var list v1.BackupList
	require.NoError(h.t, k8s.List(h.ctx, &list, client.MatchingLabels{v1.LabelRecurringSnapshot: rs.Name}))
	return list.Items
}

// waitSnapshots waits until the schedule has n Snapshots and returns them by name.
func (h *harness) waitSnapshots(rs *v1.RecurringSnapshot, n int) map[string]*v1.Snapshot {
	h.t.Helper()
	out := map[string]*v1.Snapshot{}
	require.EventuallyWithT(h.t, func(c *assert.CollectT) {
		items := h.snapshots(rs)
		assert.Len(c, items, n)
		clear(out)
		for i := range items {
			out[items[i].Name] = &items[i]
		}
	}, wait, 20*time.Millisecond)
	return out
}

// completeSnapshot plays the snapshot executor: the snapshot is cut at at.
func (h *harness) completeSnapshot(name string, at time.Time) {
	patch := fmt.Sprintf(`{"status":{"readyToUse":true,"creationTime":%q}}`, at.UTC().Format(time.RFC3339))
	require.NoError(h.t, k8s.Status().Patch(h.ctx, &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: name}}, client.RawPatch("application/merge-patch+json", []byte(patch))))
}

// failSnapshot plays the snapshot executor giving up.
func (h *harness) failSnapshot(name, message string) {
	snap := &v1.Snapshot{}
	require.NoError(h.t, k8s.Get(h.ctx, client.ObjectKey{Name: name}, snap))
	snap.Status.Conditions = []metav1.Condition{{Type: v1.ConditionStalled, Status: metav1.ConditionTrue, Reason: "ReplicaLost",
		Message: message, LastTransitionTime: metav1.Now()}}
	require.NoError(h.t, k8s.Status().Update(h.ctx, snap))
}

// completeBackup plays the backup executor: the backup is stored as id,
// started at at.
func (h *harness) completeBackup(name, id string, at time.Time) {
	patch := fmt.Sprintf(`{"status":{"state":"Completed","progress":100,"backupID":%q,"creationTime":%q}}`, id, at.UTC().Format(time.RFC3339))
	require.NoError(h.t, k8s.Status().Patch(h.ctx, &v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: name}}, client.RawPatch("application/merge-patch+json", []byte(patch))))
}

// patchStatus merge-patches an object's status (playing the controller that owns it).
func (h *harness) patchStatus(obj client.Object, status string) {
	require.NoError(h.t, k8s.Status().Patch(h.ctx, obj, client.RawPatch("application/merge-patch+json", []byte(`{"status":`+status+`}`))))
}
