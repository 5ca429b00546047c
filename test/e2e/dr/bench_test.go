//go:build bench

package dr

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/dr"
)

// The scenario of issue 12's benchmark.
const (
	benchSize     = 2 << 30 // the followed volume
	benchData     = 256 * mib
	benchRuns     = 10 // one backup a minute: ten minutes
	benchPoll     = 15 * time.Second
	benchActivate = 1 << 30
)

// TestBenchStandby: a 2 GiB volume on site A with 256 MiB of data is backed
// up every minute by a RecurringSnapshot while one 2 MiB block changes
// between backups; site B's standby polls every 15 s. Over ten runs it
// prints the time each incremental update took on B's nodes (min, median,
// max; Longhorn takes 4.3 s here and restores in full after a restart),
// restored bytes per changed byte, and the lag sampled every second
// (target at most 2 minutes); then the time from the activate commit to a
// Bound PVC for a 1 GiB volume.
func TestBenchStandby(t *testing.T) {
	setup(t)
	const src = "bench-src"
	vol := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: src, Labels: map[string]string{"app": "bench-dr"}}}
	vol.Spec.Size = *resource.NewQuantity(benchSize, resource.BinarySI)
	vol.Spec.PolicyRef = "gold"
	require.NoError(t, siteA.k8s.Create(bg, vol))
	dev := attach(t, siteA, src, "dev-node-1")
	writeRandom(t, dev, 0, benchData)
	first, _ := backup(t, src, "bench-src-0")

	drv := &v1.DisasterRecoveryVolume{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "bench"}}
	drv.Spec = v1.DisasterRecoveryVolumeSpec{BackupTargetRef: "shared", SourceVolume: src, PolicyRef: "gold",
		PollInterval: &metav1.Duration{Duration: benchPoll}, Claim: v1.ClaimTemplate{Name: "bench-data"}}
	require.NoError(t, siteB.k8s.Create(bg, drv))
	waitHeld(t, drv, first)
	standby := dr.VolumeName("default", "bench")

	// The first scheduled backup holds one changed block too.
	writeRandom(t, dev, 0, block)
	changed := int64(block)
	rs := &v1.RecurringSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "bench-dr"}, Spec: v1.RecurringSnapshotSpec{
		Schedule: "* * * * *", Action: "backup", BackupTargetRef: "shared", Concurrency: 1,
		Retention: &v1.Retention{KeepLast: 3}, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "bench-dr"}},
	}}
	require.NoError(t, siteA.k8s.Create(bg, rs))

	lags := sampleLag(t, drv)
	var updates []time.Duration
	var written, applied int64 // bytes all replicas wrote; changed bytes they applied
	seen := map[string]bool{first: true}
	for run := 1; run <= benchRuns; run++ {
		id := nextScheduledBackup(t, seen)
		seen[id] = true
		// One changed block (a different one each time) for a later backup.
		writeRandom(t, dev, int64(run*7%(benchData/block))*block, block)
		if run < benchRuns {
			changed += block
		}
		waitHeld(t, drv, id)
		for _, rep := range standbyReplicas(t, standby) {
			lr := rep.Status.LastRestore
			require.NotNil(t, lr)
			require.Equal(t, id, lr.Backup)
			updates = append(updates, lr.Duration.Duration)
			written += lr.BytesWritten
		}
	}
	lag := lags()
	applied = 2 * changed // every changed block reached B by the last run's backup, on 2 replicas
	require.NoError(t, siteA.k8s.Delete(bg, rs))

	activation := benchActivation(t)
	w := os.Stdout
	fmt.Fprintf(w, "\nDR standby (issue 12): %d GiB volume, one 2 MiB block changed per backup, backups every minute, poll %s, %d updates x %d replicas\n",
		benchSize>>30, benchPoll, benchRuns, 2)
	fmt.Fprintf(w, "%-44s %10s %10s %10s  %s\n", "measure", "min", "median", "max", "target")
	fmt.Fprintf(w, "%-44s %10s %10s %10s  %s\n", "incremental standby update (on the node)", minMedMax(updates)[0], minMedMax(updates)[1], minMedMax(updates)[2], "<= 0.5s (Longhorn 4.3s)")
	ratio := float64(written) / float64(applied)
	fmt.Fprintf(w, "%-44s %10s %10.2f %10s  %s\n", "restored bytes / changed bytes (whole run)", "", ratio, "", "<= 1.2")
	fmt.Fprintf(w, "%-44s %10s %10s %10s  %s\n", "lag over the run (sampled every second)", minMedMax(lag)[0], minMedMax(lag)[1], minMedMax(lag)[2], "<= 2m")
	fmt.Fprintf(w, "%-44s %10s %10s %10s  %s\n", "activation, commit to PVC Bound (1 GiB)", "", activation.Round(10*time.Millisecond), "", "")
	require.LessOrEqual(t, ratio, 1.2, "updates write more than the changed blocks")
}

// nextScheduledBackup waits for a completed backup of the bench schedule
// not seen yet and returns its id.
func nextScheduledBackup(t *testing.T, seen map[string]bool) string {
	t.Helper()
	var id string
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var list v1.BackupList
		assert.NoError(c, siteA.k8s.List(bg, &list, client.MatchingLabels{v1.LabelRecurringSnapshot: "bench-dr"}))
		for _, b := range list.Items {
			if b.Status.State == "Completed" && !seen[b.Status.BackupID] {
				id = b.Status.BackupID
			}
		}
		assert.NotEmpty(c, id, "no new scheduled backup")
	}, 3*time.Minute, tick)
	return id
}

func standbyReplicas(t *testing.T, vol string) []v1.Replica {
	t.Helper()
	var list v1.ReplicaList
	require.NoError(t, siteB.k8s.List(bg, &list, client.MatchingLabels{v1.LabelVolume: vol}))
	return list.Items
}

// sampleLag records the DR volume's lag (now minus the held backup's
// creation) every second until the returned func is called.
func sampleLag(t *testing.T, drv *v1.DisasterRecoveryVolume) func() []time.Duration {
	var mu sync.Mutex
	var out []time.Duration
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tk.C:
				d := &v1.DisasterRecoveryVolume{}
				if siteB.k8s.Get(bg, client.ObjectKeyFromObject(drv), d) == nil && d.Status.LastRestoredBackupTime != nil {
					mu.Lock()
					out = append(out, now.Sub(d.Status.LastRestoredBackupTime.Time))
					mu.Unlock()
				}
			}
		}
	}()
	return func() []time.Duration {
		close(stop)
		<-done
		return out
	}
}

// benchActivation follows a 1 GiB volume with 64 MiB of data and returns
// the time from the activate commit to its PVC Bound.
func benchActivation(t *testing.T) time.Duration {
	t.Helper()
	const src = "bench-act"
	vol := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: src}}
	vol.Spec.Size = *resource.NewQuantity(benchActivate, resource.BinarySI)
	vol.Spec.PolicyRef = "gold"
	require.NoError(t, siteA.k8s.Create(bg, vol))
	dev := attach(t, siteA, src, "dev-node-2")
	writeRandom(t, dev, 0, 64*mib)
	id, _ := backup(t, src, "bench-act-0")
	drv := &v1.DisasterRecoveryVolume{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "bench-act"}}
	drv.Spec = v1.DisasterRecoveryVolumeSpec{BackupTargetRef: "shared", SourceVolume: src, PolicyRef: "gold",
		PollInterval: &metav1.Duration{Duration: benchPoll}, Claim: v1.ClaimTemplate{Name: "bench-act"}}
	require.NoError(t, siteB.k8s.Create(bg, drv))
	waitHeld(t, drv, id)
	start := time.Now()
	patchDRV(t, drv, func(d *v1.DisasterRecoveryVolume) { d.Spec.Activate = true })
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		pvc := &corev1.PersistentVolumeClaim{}
		assert.NoError(c, siteB.k8s.Get(bg, client.ObjectKey{Namespace: "default", Name: "bench-act"}, pvc))
		assert.Equal(c, corev1.ClaimBound, pvc.Status.Phase)
	}, wait, 50*time.Millisecond)
	return time.Since(start)
}

func minMedMax(d []time.Duration) [3]time.Duration {
	if len(d) == 0 {
		return [3]time.Duration{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	r := func(x time.Duration) time.Duration { return x.Round(time.Millisecond) }
	return [3]time.Duration{r(s[0]), r(s[len(s)/2]), r(s[len(s)-1])}
}
