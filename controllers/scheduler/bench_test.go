//go:build bench

package scheduler

import (
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/policies"
)

// The scenario of issue 10's scheduler benchmark. Concurrency 8 with 5-20 s
// backups would finish about 38 backups a minute (8 slots × 60 s / 12.5 s)
// of the 100 due: most runs would never start and the RPO would grow
// without bound. 32 slots finish about 154 a minute, so every run starts,
// while the 100 starts inside the 30 s jitter still fill every slot at the
// peak (the limit binds).
const (
	benchVolumes     = 100
	benchRuns        = 10
	benchSchedule    = "* * * * *"
	benchInterval    = time.Minute
	benchJitter      = 30 * time.Second
	benchConcurrency = 32
	benchStep        = time.Second
	benchMinBackup   = 5 * time.Second
	benchMaxBackup   = 20 * time.Second
)

// TestBenchSchedule: 100 volumes under one backup schedule every minute with
// 30 s jitter, driven through 10 simulated minutes in 1 s steps of the
// injected clock. The test plays the backup executor (each Backup completes
// a pseudo-random 5-20 s of simulated time after it was created) and the
// Volume controller (status.lastBackupTime), and reports how starts spread
// in each minute, the Backups in flight, the CPU used and the worst
// cairn_volume_rpo_seconds. Peak concurrency and worst RPO are bounds in
// simulated time and asserted; nothing asserts on wall-clock time. Every
// step pokes the schedule as the harness does; each poke also passes the
// RecurringSnapshot webhook, whose time the table shows apart.
func TestBenchSchedule(t *testing.T) {
	h := newHarness(t, "bench")
	// The RPO collector reads the same simulated clock as the scheduler.
	rpo.mu.Lock()
	prevNow := rpo.now
	rpo.now = h.clock.Now
	rpo.mu.Unlock()
	t.Cleanup(func() {
		rpo.mu.Lock()
		defer rpo.mu.Unlock()
		rpo.now = prevNow
	})

	labels, sel := h.selectAll()
	vols := createBenchVolumes(t, h, labels)
	// A volume's RPO counts from the schedule's creation until its first
	// backup, and the first run is the minute after that creation: created
	// at least 20 s into a minute, the warm-up adds at most 40 s, not a full
	// interval on top of the first run's jitter, slot wait and backup.
	if s := time.Now().Second(); s < 20 {
		time.Sleep(time.Duration(20-s)*time.Second - time.Duration(time.Now().Nanosecond()))
	}
	rs := h.schedule("backup", v1.RecurringSnapshotSpec{
		Schedule: benchSchedule, Jitter: &metav1.Duration{Duration: benchJitter}, Action: v1.ActionBackup,
		BackupTargetRef: "bench-target", Concurrency: benchConcurrency, Selector: sel,
	})
	h.waitStatus(rs, func(c *assert.CollectT, st v1.RecurringSnapshotStatus) {
		assert.Equal(c, int32(benchVolumes), st.VolumeCount)
	})
	w := watchBackups(t, h, rs)
	b := newBenchRun(t, h, rs, vols)

	cpu0, plane0, met0, wall0 := processCPU(), controlPlaneCPU(), gatherBenchMetrics(t, h), time.Now()
	for at := b.t1; at.Before(b.end); at = at.Add(benchStep) {
		b.step(at, w)
	}
	cpu, plane, met, wall := processCPU()-cpu0, controlPlaneCPU()-plane0, gatherBenchMetrics(t, h).sub(met0), time.Since(wall0)
	w.stop()

	b.print(w, cpu, plane, met, wall)
	assert.LessOrEqual(t, w.peak, benchConcurrency, "Backups in flight at once (every state the API server recorded)")
	assert.LessOrEqual(t, b.rpo.worst, b.rpoBound().Seconds(), "worst cairn_volume_rpo_seconds against interval + jitter + longest backup")
	assert.Empty(t, b.anomalies, "starts the scheduler must never make")
	assert.Zero(t, missedCount(t, rs.Name), "no run was missed: the manager never stopped")
}

// createBenchVolumes creates the volumes, 8 at a time, and returns them by name.
func createBenchVolumes(t *testing.T, h *harness, labels map[string]string) map[string]*v1.Volume {
	out := make(map[string]*v1.Volume, benchVolumes)
	var mu sync.Mutex
	var wg sync.WaitGroup
	work := make(chan int)
	errs := make(chan error, benchVolumes)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				vol := &v1.Volume{
					ObjectMeta: metav1.ObjectMeta{Name: h.name(fmt.Sprintf("vol-%03d", i)), Labels: labels},
					Spec:       v1.VolumeSpec{Size: resource.MustParse("1Gi")},
				}
				err := k8s.Create(h.ctx, vol)
				errs <- err
				if err == nil {
					mu.Lock()
					out[vol.Name] = vol
					mu.Unlock()
				}
			}
		})
	}
	for i := range benchVolumes {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	return out
}

// backupWatch records every state the API server reports for a schedule's
// Backups: their arrival, in order, and the peak number in flight.
type backupWatch struct {
	w    watch.Interface
	done chan struct{}

	mu      sync.Mutex
	arrived []arrival
	open    map[string]bool
	n, peak int
	closed  bool
}

// arrival is a Backup as the scheduler created it.
type arrival struct {
	name, volume string
	run          time.Time
}

func watchBackups(t *testing.T, h *harness, rs *v1.RecurringSnapshot) *backupWatch {
	w, err := k8s.Watch(h.ctx, &v1.BackupList{}, client.MatchingLabels{v1.LabelRecurringSnapshot: labelValue(rs.Name)})
	require.NoError(t, err)
	bw := &backupWatch{w: w, done: make(chan struct{}), open: map[string]bool{}}
	go func() {
		defer close(bw.done)
		for ev := range w.ResultChan() {
			bk, ok := ev.Object.(*v1.Backup)
			if !ok {
				continue
			}
			o := fromBackup(bk)
			bw.mu.Lock()
			if _, known := bw.open[bk.Name]; !known && ev.Type != watch.Deleted {
				bw.arrived = append(bw.arrived, arrival{name: bk.Name, volume: o.volume, run: o.run})
			}
			now := ev.Type != watch.Deleted && o.state == inFlight && !o.deleting()
			switch was := bw.open[bk.Name]; {
			case now && !was:
				bw.n++
			case was && !now:
				bw.n--
			}
			bw.open[bk.Name] = now
			bw.peak = max(bw.peak, bw.n)
			bw.mu.Unlock()
		}
		bw.mu.Lock()
		bw.closed = true
		bw.mu.Unlock()
	}()
	return bw
}

// since returns the arrivals from index i on, and whether the watch ended.
func (w *backupWatch) since(i int) ([]arrival, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.arrived[i:]), w.closed
}

func (w *backupWatch) stop() {
	w.w.Stop()
	<-w.done
}

// benchBackup is one Backup as the bench's executor sees it.
type benchBackup struct {
	name, volume string
	run          int
	start, end   time.Time
	completed    bool
}

// benchRun is the simulated world: the executor's backups, the volumes'
// recovery points, and what the bench measured.
type benchRun struct {
	t        *testing.T
	h        *harness
	rs       *v1.RecurringSnapshot
	names    []string
	offset   map[string]time.Duration // jitter per volume
	ref      map[string]time.Time     // when each volume came under the schedule
	t1, end  time.Time
	backups  []*benchBackup
	byRun    [benchRuns]map[string]*benchBackup
	notStart [benchRuns]int
	lastEnd  map[string]time.Time
	seen     int // arrivals taken from the watch

	steps, stepsFull, stepPeak int
	anomalies                  []string
	rpo                        rpoStats
	sampler                    *prometheus.Registry
}

// rpoStats are the worst cairn_volume_rpo_seconds samples: overall, before
// a volume's first backup completed (the warm-up) and after it.
type rpoStats struct {
	worst, warmup, steady float64
	worstVolume           string
	worstAt               time.Time
	// drift is the largest difference between the collector and the age
	// the executor's own records give.
	drift float64
}

func newBenchRun(t *testing.T, h *harness, rs *v1.RecurringSnapshot, vols map[string]*v1.Volume) *benchRun {
	cur := &v1.RecurringSnapshot{}
	require.NoError(t, k8s.Get(h.ctx, client.ObjectKeyFromObject(rs), cur))
	b := &benchRun{t: t, h: h, rs: cur, offset: map[string]time.Duration{}, ref: map[string]time.Time{},
		lastEnd: map[string]time.Time{}, sampler: prometheus.NewRegistry()}
	require.NoError(t, b.sampler.Register(rpo))
	for name, vol := range vols {
		b.names = append(b.names, name)
		b.offset[name] = policies.JitterOffset(name, cur.Name, benchJitter)
		b.ref[name] = recoveryPoint(vol, cur)
	}
	slices.Sort(b.names)
	sched, err := policies.ParseSchedule(benchSchedule, "UTC")
	require.NoError(t, err)
	b.t1 = firstRun(sched, cur)
	b.end = b.t1.Add(benchRuns * benchInterval)
	for i := range b.byRun {
		b.byRun[i] = map[string]*benchBackup{}
	}
	return b
}

// step is one tick of the simulated clock: sample the RPO as it stands just
// before at, complete the backups due at at (executor, then Volume
// controller), poke the schedule, and wait until the scheduler started all
// it may at at and the collector holds the new recovery points.
func (b *benchRun) step(at time.Time, w *backupWatch) {
	b.steps++
	b.h.clock.set(at)
	k := int(at.Sub(b.t1) / benchInterval)
	run := b.t1.Add(time.Duration(k) * benchInterval)
	b.sampleRPO(at)
	completed := b.complete(at)
	b.waitVolumeCache(completed)
	b.h.advance(at, b.rs)
	if at.Equal(run) {
		if k > 0 {
			b.notStart[k-1] = benchVolumes - len(b.byRun[k-1])
		}
		b.h.waitRun(b.rs, run)
	}

	// What a work-conserving scheduler starts now: every volume of the
	// current run whose jittered start has come, as far as slots allow.
	inFlight, pending := 0, 0
	for _, bk := range b.backups {
		if !bk.completed {
			inFlight++
		}
	}
	for _, name := range b.names {
		if b.byRun[k][name] == nil && !run.Add(b.offset[name]).After(at) {
			pending++
		}
	}
	want := len(b.byRun[k]) + min(max(benchConcurrency-inFlight, 0), pending)
	deadline := time.Now().Add(wait)
	for {
		b.takeArrivals(at, w)
		if len(b.byRun[k]) >= want && b.rpoFresh(completed) {
			break
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("at %s (run %d, %s): the scheduler started %d of the %d Backups due (%d in flight, %d pending), RPO refreshed: %v",
				at.UTC().Format(time.TimeOnly), k+1, run.UTC().Format(time.TimeOnly), len(b.byRun[k]), want, inFlight, pending, b.rpoFresh(completed))
		}
		time.Sleep(2 * time.Millisecond)
	}
	if len(b.byRun[k]) > want {
		b.anomaly("at %s run %d has %d Backups, %d allowed", at.UTC().Format(time.TimeOnly), k+1, len(b.byRun[k]), want)
	}
	open := 0
	for _, bk := range b.backups {
		if !bk.completed {
			open++
		}
	}
	b.stepPeak = max(b.stepPeak, open)
	if open >= benchConcurrency {
		b.stepsFull++
	}
}

// takeArrivals gives the Backups the scheduler created since the last call
// their simulated start (now) and duration.
func (b *benchRun) takeArrivals(at time.Time, w *backupWatch) {
	news, closed := w.since(b.seen)
	if closed {
		b.t.Fatal("the watch on the schedule's Backups ended")
	}
	b.seen += len(news)
	for _, a := range news {
		k := int(a.run.Sub(b.t1) / benchInterval)
		if k < 0 || k >= benchRuns || !b.t1.Add(time.Duration(k)*benchInterval).Equal(a.run) {
			b.anomaly("%s: run %s is not one of the bench's", a.name, a.run.UTC())
			continue
		}
		if cur := b.t1.Add(time.Duration(int(at.Sub(b.t1)/benchInterval)) * benchInterval); !a.run.Equal(cur) {
			b.anomaly("%s of run %d started at %s, after the next run came due", a.name, k+1, at.UTC().Format(time.TimeOnly))
		}
		if due := a.run.Add(b.offset[a.volume]); at.Before(due) {
			b.anomaly("%s started at %s, before its jittered start %s", a.name, at.UTC().Format(time.TimeOnly), due.UTC().Format(time.TimeOnly))
		}
		if b.byRun[k][a.volume] != nil {
			b.anomaly("%s: a second Backup of volume %s in run %d", a.name, a.volume, k+1)
		}
		bk := &benchBackup{name: a.name, volume: a.volume, run: k, start: at, end: at.Add(benchDuration(a.name))}
		b.backups = append(b.backups, bk)
		b.byRun[k][a.volume] = bk
	}
}

// complete plays the backup executor and then the Volume controller for the
// backups due to finish at at, and returns their volumes.
func (b *benchRun) complete(at time.Time) map[string]time.Time {
	out := map[string]time.Time{}
	for _, bk := range b.backups {
		if bk.completed || bk.end.After(at) {
			continue
		}
		bk.completed = true
		b.h.patchStatus(&v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: bk.name}}, fmt.Sprintf(
			`{"state":"Completed","progress":100,"backupID":%q,"creationTime":%q,"completionTime":%q}`,
			"bk-"+bk.name, rfc3339(bk.start), rfc3339(bk.end)))
		if last, ok := b.lastEnd[bk.volume]; !ok || bk.end.After(last) {
			b.lastEnd[bk.volume] = bk.end
			b.h.patchStatus(&v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: bk.volume}},
				fmt.Sprintf(`{"lastBackup":%q,"lastBackupTime":%q}`, bk.name, rfc3339(bk.end)))
			out[bk.volume] = bk.end
		}
	}
	return out
}

// waitVolumeCache waits until the manager's cache holds the new
// lastBackupTimes, so the reconcile the poke causes reads them (the
// scheduler's Volume watch ignores lastBackupTime).
func (b *benchRun) waitVolumeCache(completed map[string]time.Time) {
	for name, end := range completed {
		require.EventuallyWithT(b.t, func(c *assert.CollectT) {
			vol := &v1.Volume{}
			if assert.NoError(c, mgr.GetClient().Get(b.h.ctx, client.ObjectKey{Name: name}, vol)) {
				assert.True(c, vol.Status.LastBackupTime != nil && vol.Status.LastBackupTime.Time.Equal(end))
			}
		}, wait, 2*time.Millisecond)
	}
}

// rpoFresh reports whether the collector holds the completed volumes' new
// recovery points.
func (b *benchRun) rpoFresh(completed map[string]time.Time) bool {
	rpo.mu.Lock()
	defer rpo.mu.Unlock()
	for name, end := range completed {
		if !rpo.refs[b.rs.Name][name].Equal(end) {
			return false
		}
	}
	return true
}

// sampleRPO scrapes cairn_volume_rpo_seconds through the collector and
// compares it with the age the executor's records give.
func (b *benchRun) sampleRPO(at time.Time) {
	fams, err := b.sampler.Gather()
	require.NoError(b.t, err)
	got := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "volume" {
					got[l.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	for _, name := range b.names {
		v, ok := got[name]
		if !ok {
			b.anomaly("at %s volume %s has no cairn_volume_rpo_seconds", at.UTC().Format(time.TimeOnly), name)
			continue
		}
		ref, backedUp := b.lastEnd[name]
		if !backedUp {
			ref = b.ref[name]
		}
		b.rpo.drift = max(b.rpo.drift, abs(v-at.Sub(ref).Seconds()))
		if backedUp {
			b.rpo.steady = max(b.rpo.steady, v)
		} else {
			b.rpo.warmup = max(b.rpo.warmup, v)
		}
		if v > b.rpo.worst {
			b.rpo.worst, b.rpo.worstVolume, b.rpo.worstAt = v, name, at
		}
	}
}

func (b *benchRun) anomaly(format string, args ...any) {
	b.anomalies = append(b.anomalies, fmt.Sprintf(format, args...))
}

// longestBackup is the longest simulated backup.
func (b *benchRun) longestBackup() time.Duration {
	var d time.Duration
	for _, bk := range b.backups {
		d = max(d, bk.end.Sub(bk.start))
	}
	return d
}

// rpoBound is issue 10's target: interval + jitter + backup time.
func (b *benchRun) rpoBound() time.Duration {
	return benchInterval + benchJitter + b.longestBackup()
}

// print writes the per-run and the summary tables.
func (b *benchRun) print(w *backupWatch, cpu, plane float64, met benchMetrics, wall time.Duration) {
	fmt.Printf("\nscheduler: %d volumes, one backup schedule %q, jitter %s, concurrency %d, backups %s-%s, %d runs in %s steps of simulated time\n",
		benchVolumes, benchSchedule, benchJitter, benchConcurrency, benchMinBackup, benchMaxBackup, benchRuns, benchStep)
	fmt.Printf("%-10s %8s %12s %22s %14s %10s\n", "run (UTC)", "started", "not started", "start after min/med/max", "slot wait max", "completed")
	var all []float64
	var waitMax float64
	started, notStarted, completed := 0, 0, 0
	for k := range benchRuns {
		run := b.t1.Add(time.Duration(k) * benchInterval)
		var offs []float64
		var wmax float64
		done := 0
		for _, bk := range b.byRun[k] {
			offs = append(offs, bk.start.Sub(run).Seconds())
			wmax = max(wmax, bk.start.Sub(run.Add(b.offset[bk.volume])).Seconds())
			if bk.completed {
				done++
			}
		}
		ns := b.notStart[k]
		if k == benchRuns-1 {
			ns = benchVolumes - len(b.byRun[k]) // not started by the end of the bench
		}
		all = append(all, offs...)
		waitMax = max(waitMax, wmax)
		started, notStarted, completed = started+len(offs), notStarted+ns, completed+done
		fmt.Printf("%-10s %4d/%-3d %12d %22s %12.0fs %10d\n", run.UTC().Format("15:04"), len(offs), benchVolumes, ns, spread(offs), wmax, done)
	}
	bound := b.rpoBound()
	fmt.Printf("\n%-46s %18s %24s\n", "measure", "value", "target")
	row := func(m, v, target string) { fmt.Printf("%-46s %18s %24s\n", m, v, target) }
	row("peak Backups in flight (API server states)", strconv.Itoa(w.peak), fmt.Sprintf("<= %d", benchConcurrency))
	row("peak in flight after a step / steps at limit", fmt.Sprintf("%d / %d of %d", b.stepPeak, b.stepsFull, b.steps), "-")
	row("runs started / expected", fmt.Sprintf("%d / %d", started, benchVolumes*benchRuns), "-")
	row("runs not started", strconv.Itoa(notStarted), "-")
	row("runs completed within the 10 minutes", strconv.Itoa(completed), "-")
	row("start after the minute min/med/max", spread(all), fmt.Sprintf("jitter 0-%.0fs + slot wait", benchJitter.Seconds()-1))
	row("longest wait for a slot", fmt.Sprintf("%.0fs", waitMax), "-")
	row("process CPU (manager, webhook, bench client)", fmt.Sprintf("%.1fs", cpu), "-")
	row("  per run started", fmt.Sprintf("%.1fms", 1000*cpu/float64(max(started, 1))), "-")
	row("  per simulated minute", fmt.Sprintf("%.2fs", cpu/benchRuns), "-")
	row("scheduler reconciles (errors)", fmt.Sprintf("%d (%d)", met.reconciles, met.errors), "-")
	row("  wall time in Reconcile, total / mean", fmt.Sprintf("%.1fs / %.0fms", met.reconcileSeconds, 1000*met.reconcileSeconds/float64(max(met.timed, 1))), "-")
	row("RecurringSnapshot webhook calls (the pokes)", strconv.Itoa(met.hooks), "-")
	row("  wall time in the webhook, total / mean", fmt.Sprintf("%.1fs / %.0fms", met.hookSeconds, 1000*met.hookSeconds/float64(max(met.hooks, 1))), "-")
	row("control plane CPU (kube-apiserver + etcd)", fmt.Sprintf("%.1fs", plane), "-")
	row("worst cairn_volume_rpo_seconds", fmt.Sprintf("%.0fs", b.rpo.worst), fmt.Sprintf("<= %.0fs", bound.Seconds()))
	row("  bound: interval + jitter + longest backup", fmt.Sprintf("%.0f+%.0f+%.0fs", benchInterval.Seconds(), benchJitter.Seconds(), b.longestBackup().Seconds()), "-")
	row("  ratio worst / bound", fmt.Sprintf("%.2f", b.rpo.worst/bound.Seconds()), "<= 1")
	row("  worst before a volume's first backup", fmt.Sprintf("%.0fs", b.rpo.warmup), "-")
	row("  worst after a volume's first backup", fmt.Sprintf("%.0fs", b.rpo.steady), "-")
	row("  worst on", fmt.Sprintf("%s %s", strings.TrimPrefix(b.rpo.worstVolume, b.h.prefix+"-"), b.rpo.worstAt.UTC().Format(time.TimeOnly)), "-")
	row("  schedule created before its first run", fmt.Sprintf("%.0fs", b.t1.Sub(b.rs.CreationTimestamp.Time).Seconds()), "-")
	row("collector vs executor's records, max |diff|", fmt.Sprintf("%.0fs", b.rpo.drift), "0s")
	row("anomalies (early, extra or late starts)", strconv.Itoa(len(b.anomalies)), "0")
	row("wall time (simulated 10 minutes)", fmt.Sprintf("%.1fs", wall.Seconds()), "-")
	for i, a := range b.anomalies {
		if i == 10 {
			fmt.Printf("  ... and %d more\n", len(b.anomalies)-10)
			break
		}
		fmt.Println("  anomaly:", a)
	}
}

// spread formats min/median/max seconds.
func spread(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	s := slices.Sorted(slices.Values(xs))
	return fmt.Sprintf("%.0f/%.0f/%.0fs", s[0], s[len(s)/2], s[len(s)-1])
}

// benchDuration is a Backup's simulated duration: pseudo-random in
// [benchMinBackup, benchMaxBackup], whole seconds, fixed by its name.
func benchDuration(name string) time.Duration {
	h := fnv.New32a()
	h.Write([]byte(name))
	span := uint32((benchMaxBackup-benchMinBackup)/time.Second) + 1
	return benchMinBackup + time.Duration(h.Sum32()%span)*time.Second
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// processCPU is the user and system CPU this process (the manager with
// the scheduler, and the bench's client) has used, in seconds.
func processCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return tv(ru.Utime) + tv(ru.Stime)
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// controlPlaneCPU is the CPU the running children of this process
// (kube-apiserver and etcd) have used, in seconds (Linux /proc, 100 ticks a
// second); 0 where /proc is missing.
func controlPlaneCPU() float64 {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	ppid := strconv.Itoa(os.Getpid())
	var ticks float64
	for _, p := range stats {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// Fields after the command name: state ppid ... utime(14) stime(15).
		_, rest, ok := strings.Cut(string(raw), ") ")
		f := strings.Fields(rest)
		if !ok || len(f) < 13 || f[1] != ppid {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		s, _ := strconv.ParseFloat(f[12], 64)
		ticks += u + s
	}
	return ticks / 100
}

// benchMetrics are controller-runtime's figures for the bench's scheduler
// and for the RecurringSnapshot webhook (which every poke of the schedule
// calls).
type benchMetrics struct {
	reconciles, errors, timed, hooks int
	reconcileSeconds, hookSeconds    float64
}

func (m benchMetrics) sub(o benchMetrics) benchMetrics {
	return benchMetrics{m.reconciles - o.reconciles, m.errors - o.errors, m.timed - o.timed, m.hooks - o.hooks,
		m.reconcileSeconds - o.reconcileSeconds, m.hookSeconds - o.hookSeconds}
}

// recurringSnapshotWebhook is the path of the RecurringSnapshot validator.
const recurringSnapshotWebhook = "/validate-storage-cairn-dev-v1alpha1-recurringsnapshot"

func gatherBenchMetrics(t *testing.T, h *harness) benchMetrics {
	families, err := metrics.Registry.Gather()
	require.NoError(t, err)
	controller := "recurringsnapshot-" + h.prefix
	var out benchMetrics
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch {
			case labels["controller"] == controller && f.GetName() == "controller_runtime_reconcile_total":
				out.reconciles += int(m.GetCounter().GetValue())
			case labels["controller"] == controller && f.GetName() == "controller_runtime_reconcile_errors_total":
				out.errors += int(m.GetCounter().GetValue())
			case labels["controller"] == controller && f.GetName() == "controller_runtime_reconcile_time_seconds":
				out.timed += int(m.GetHistogram().GetSampleCount())
				out.reconcileSeconds += m.GetHistogram().GetSampleSum()
			case labels["webhook"] == recurringSnapshotWebhook && f.GetName() == "controller_runtime_webhook_latency_seconds":
				out.hooks += int(m.GetHistogram().GetSampleCount())
				out.hookSeconds += m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}
