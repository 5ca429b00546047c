package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/internal/testutil"
)

// TestDevSmoke runs `cairn dev` as a user would: it must bring up the
// control plane with the CRDs served and the samples applied, refuse a
// second run on the same data directory with a clear message, stop on
// SIGINT leaving no child process behind, and keep its state for the next run.
func TestDevSmoke(t *testing.T) {
	ctrl.SetLogger(logr.Discard())
	testutil.RequireTool(t, "kube-apiserver")
	testutil.RequireTool(t, "etcd")
	bin := filepath.Join(t.TempDir(), "cairn")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	dataDir := filepath.Join(t.TempDir(), "dev")

	// First run: samples applied.
	dev, kubeconfig := startDev(t, bin, dataDir)
	c := devClient(t, kubeconfig)
	ctx := context.Background()
	crd := &apiextensionsv1.CustomResourceDefinition{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Name: "volumes.storage.cairn.dev"}, crd))
	vol := &cairnv1.Volume{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Name: "pg-data"}, vol))
	// The samples come up healthy: the volume on three nodes, the target
	// on the local versitygw and reachable, the sample snapshot taken and
	// its backup complete in the target.
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		assert.NoError(ct, c.Get(ctx, client.ObjectKey{Name: "pg-data"}, vol))
		assert.Equal(ct, cairnv1.RobustnessHealthy, vol.Status.Robustness)
		assert.Len(ct, vol.Status.Replicas, 3)
		assert.True(ct, meta.IsStatusConditionTrue(vol.Status.Conditions, cairnv1.ConditionReady))
		bt := &cairnv1.BackupTarget{}
		assert.NoError(ct, c.Get(ctx, client.ObjectKey{Name: "primary"}, bt))
		assert.Equal(ct, "s3://cairn-dev/backups", bt.Spec.URL)
		assert.True(ct, meta.IsStatusConditionTrue(bt.Status.Conditions, cairnv1.ConditionReady), "%v", bt.Status.Conditions)
		b := &cairnv1.Backup{}
		assert.NoError(ct, c.Get(ctx, client.ObjectKey{Name: "pg-data-before-migration"}, b))
		assert.Equal(ct, "Completed", b.Status.State, "%v", b.Status.Conditions)
		// The manager's metrics, at the printed URL, carry the volume's RPO
		// (it is under the sample backup schedules).
		resp, err := http.Get(printedMetrics)
		if assert.NoError(ct, err) {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			assert.Contains(ct, string(body), `cairn_volume_rpo_seconds{volume="pg-data"}`)
			assert.Contains(ct, string(body), `cairn_volume_robustness{volume="pg-data"} 1`)
		}
	}, 3*time.Minute, 250*time.Millisecond)
	// The command dev prints works as printed.
	get := exec.Command(printedKubectl, "get", "cairn")
	get.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	out, err = get.CombinedOutput()
	require.NoError(t, err, "%s get cairn: %s", printedKubectl, out)
	require.Contains(t, string(out), "pg-data")
	checkDevPVC(t, kubeconfig)

	// A second run on the same data directory is refused at once.
	second := exec.Command(bin, "dev", "--data-dir", dataDir, "--bin-dir", testutil.BinDir())
	secondOut, err := second.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(secondOut), "another `cairn dev` (pid "+strconv.Itoa(dev.Process.Pid)+")")

	stopDev(t, dev, dataDir)

	// Second run without samples: the first run's objects are still there.
	dev, kubeconfig = startDev(t, bin, dataDir, "--samples=false")
	require.NoError(t, devClient(t, kubeconfig).Get(ctx, client.ObjectKey{Name: "pg-data"}, &cairnv1.Volume{}))

	// Killed outright, dev cannot stop its control plane; the next run
	// names the leftovers instead of hanging on a locked etcd.
	left := controlPlanePids(t, dataDir)
	s3Data := filepath.Join(dataDir, "s3", "data")
	require.NotEmpty(t, testutil.Procs("versitygw", s3Data))
	require.NoError(t, dev.Process.Kill())
	_ = dev.Wait()
	// versitygw goes with dev (it runs in a process group of its own).
	require.Eventually(t, func() bool { return len(testutil.Procs("versitygw", s3Data)) == 0 }, time.Minute, 100*time.Millisecond,
		"versitygw outlived the killed dev")
	third := exec.Command(bin, "dev", "--data-dir", dataDir, "--bin-dir", testutil.BinDir())
	thirdOut, err := third.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(thirdOut), "control plane processes left by an earlier run are still running")
	for _, pid := range left {
		require.Contains(t, string(thirdOut), "pid "+strconv.Itoa(pid))
	}
}

// controlPlanePids returns the etcd and kube-apiserver pids a running dev
// recorded, and makes sure the test kills them whatever happens.
func controlPlanePids(t *testing.T, dataDir string) []int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dataDir, "controlplane.pids"))
	require.NoError(t, err)
	var pids []int
	names := map[string]bool{}
	for _, f := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(f)
		require.NoError(t, err)
		cmdline, err := os.ReadFile(filepath.Join("/proc", f, "cmdline"))
		require.NoError(t, err, "recorded pid %d is not running", pid)
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		names[filepath.Base(argv0)] = true
		pids = append(pids, pid)
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	}
	require.True(t, names["etcd"] && names["kube-apiserver"], "recorded %v", names)
	return pids
}

// alive reports whether pid runs and is not a zombie (PID 1 here does not
// reap orphans).
func alive(pid int) bool {
	st, ok := readProcStat(strconv.Itoa(pid))
	return ok && st.state != "Z"
}

// printedKubectl is the kubectl command the last started dev printed.
var printedKubectl string

// printedMetrics is the metrics URL dev printed.
var printedMetrics string

func startDev(t *testing.T, bin, dataDir string, extra ...string) (*exec.Cmd, string) {
	t.Helper()
	args := append([]string{"dev", "--data-dir", dataDir, "--bin-dir", testutil.BinDir()}, extra...)
	cmd := exec.Command(bin, args...)
	// Own process group, so the test can find every descendant afterwards.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })

	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var kubeconfig string
		for sc.Scan() {
			line := sc.Text()
			if f := strings.Fields(line); len(f) == 2 && f[0] == "kubeconfig" {
				kubeconfig = f[1]
			}
			if f := strings.Fields(line); len(f) == 3 && f[1] == "get" && f[2] == "cairn" {
				printedKubectl = f[0]
			}
			if f := strings.Fields(line); len(f) == 2 && f[0] == "metrics" {
				printedMetrics = f[1]
			}
			if strings.HasPrefix(line, "Press Ctrl-C to stop.") {
				ready <- kubeconfig
			}
		}
		close(ready)
	}()
	select {
	case kc, ok := <-ready:
		require.True(t, ok, "cairn dev exited before it was ready; stderr:\n%s", tail(stderr.String()))
		require.FileExists(t, kc)
		return cmd, kc
	case <-time.After(3 * time.Minute):
		t.Fatalf("cairn dev not ready after 3 minutes; stderr:\n%s", tail(stderr.String()))
	}
	return nil, ""
}

// stopDev sends SIGINT to cairn dev alone (not its group) and checks that
// it exits cleanly and that none of its children survive: neither in its
// process group nor etcd and kube-apiserver, which envtest starts in groups
// of their own.
func stopDev(t *testing.T, cmd *exec.Cmd, dataDir string) {
	t.Helper()
	pgid := cmd.Process.Pid
	children := controlPlanePids(t, dataDir)
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "cairn dev exited with an error after SIGINT")
	case <-time.After(90 * time.Second):
		t.Fatal("cairn dev did not stop within 90s of SIGINT")
	}
	require.Eventually(t, func() bool { return len(groupMembers(pgid)) == 0 }, 10*time.Second, 100*time.Millisecond,
		"processes left behind: %v", groupMembers(pgid))
	for _, pid := range children {
		require.False(t, alive(pid), "control plane process %d survived", pid)
	}
}

// groupMembers lists the command lines of live processes in a process group.
func groupMembers(pgid int) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if st, ok := readProcStat(e.Name()); ok && st.state != "Z" && st.pgrp == strconv.Itoa(pgid) {
			cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return out
}

func devClient(t *testing.T, kubeconfig string) client.Client {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	require.NoError(t, err)
	scheme := controllers.NewScheme()
	require.NoError(t, apiextensionsv1.AddToScheme(scheme))
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	require.NoError(t, err)
	return c
}

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}
