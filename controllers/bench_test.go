//go:build bench

package controllers_test

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestBenchPolicyChange: 1,000 detached volumes under one policy; a
// second policy is raised above it and the time until every volume's
// status names the new policy is measured, with the peak RSS of this
// process (the manager plus the benchmark's uncached client).
func TestBenchPolicyChange(t *testing.T) {
	const suite, volumes = "bench", 1000
	for i := 1; i <= 3; i++ {
		addNode(t, suite, fmt.Sprintf("bench-%d", i), "z")
	}
	a, b := newPolicy("bench-a", suite, 1), newPolicy("bench-b", suite, 1)
	a.Spec.Priority = 1
	createPolicy(t, a)
	createPolicy(t, b)
	createVolumes(t, suite, volumes)
	start := time.Now()
	waitPolicy(t, "bench-a", volumes)
	settle := time.Since(start)

	p := &v1.VolumePolicy{}
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Name: "bench-b"}, p))
	patch := client.MergeFrom(p.DeepCopy())
	p.Spec.Priority = 2
	start = time.Now()
	require.NoError(t, k8s.Patch(bg, p, patch))
	waitPolicy(t, "bench-b", volumes)
	change := time.Since(start)
	rss := peakRSSMiB(t)
	fmt.Printf("\nmanager: %d detached volumes under one policy\n", volumes)
	fmt.Printf("%-40s %10s %10s\n", "measure", "value", "target")
	fmt.Printf("%-40s %9.1fs %10s\n", "create and place all volumes", settle.Seconds(), "-")
	fmt.Printf("%-40s %9.1fs %10s\n", "policy change reaches every status", change.Seconds(), "<= 60s")
	fmt.Printf("%-40s %7d MiB %10s\n", "peak RSS (manager + bench client)", rss, "<= 200 MiB")
}

func createVolumes(t *testing.T, suite string, n int) {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				errs <- k8s.Create(bg, newVolume(fmt.Sprintf("bench-%04d", i), suite))
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// waitPolicy waits until n volumes report policy as their effective one.
func waitPolicy(t *testing.T, policy string, n int) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		var list v1.VolumeList
		require.NoError(t, k8s.List(bg, &list))
		got := 0
		for _, v := range list.Items {
			if v.Status.EffectivePolicy == policy {
				got++
			}
		}
		if got >= n {
			return
		}
		require.True(t, time.Now().Before(deadline), "%d of %d volumes on %s after 5 minutes", got, n, policy)
		time.Sleep(200 * time.Millisecond)
	}
}

func peakRSSMiB(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb / 1024
		}
	}
	return 0
}
