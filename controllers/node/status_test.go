package node

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/require"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/engine"
)

func TestReplicaStatus(t *testing.T) {
	for _, tc := range []struct {
		name        string
		scope       replicaScope
		state       string
		ready       metav1.ConditionStatus
		reason      string
		reconciling bool
		stalled     bool
		observed    bool
	}{
		{"detached", replicaScope{address: "h:1"}, "Stopped", metav1.ConditionTrue, "Detached", false, false, true},
		{"serving", replicaScope{address: "h:1", running: true, serving: true, proc: ProcState{PID: 7, Running: true}}, "Running", metav1.ConditionTrue, "Running", false, false, true},
		{"starting", replicaScope{address: "h:1", running: true, proc: ProcState{PID: 7, Running: true}}, "Starting", metav1.ConditionFalse, "Starting", true, false, false},
		{"crashed", replicaScope{address: "h:1", running: true, proc: ProcState{LastExit: "signal: killed", Restarts: 1}}, "Error", metav1.ConditionFalse, "ProcessExited", true, false, false},
		{"no token", replicaScope{running: false, err: errNoToken}, "Starting", metav1.ConditionFalse, "WaitingForToken", true, false, false},
		{"bad disk", replicaScope{err: reconcile.TerminalError(errors.New("diskPath"))}, "Error", metav1.ConditionFalse, "InvalidSpec", false, true, true},
		{"transient", replicaScope{err: errors.New("boom")}, "Error", metav1.ConditionFalse, "ReconcileFailed", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.scope
			s.obj = &cairnv1.Replica{ObjectMeta: metav1.ObjectMeta{Generation: 3}, Status: cairnv1.ReplicaStatus{ObservedGeneration: -1}}
			setReplicaStatus(&s)
			st := s.obj.Status
			require.Equal(t, tc.state, st.State)
			ready := apimeta.FindStatusCondition(st.Conditions, condReady)
			require.Equal(t, tc.ready, ready.Status)
			require.Equal(t, tc.reason, ready.Reason)
			require.NotEmpty(t, ready.Message)
			require.Equal(t, tc.reconciling, apimeta.IsStatusConditionTrue(st.Conditions, condReconciling))
			require.Equal(t, tc.stalled, apimeta.IsStatusConditionTrue(st.Conditions, condStalled))
			require.Equal(t, tc.observed, st.ObservedGeneration == 3)
		})
	}
}

func TestEngineStatus(t *testing.T) {
	healthy := &engine.Status{Robustness: engine.Healthy, Replicas: []engine.ReplicaStatus{{Address: "a:1", Mode: engine.ModeHealthy}}}
	rebuilding := &engine.Status{Robustness: engine.Degraded, Replicas: []engine.ReplicaStatus{
		{Address: "a:1", Mode: engine.ModeHealthy}, {Address: "b:1", Mode: engine.ModeRebuilding, RebuildCopied: 25, RebuildTotal: 100}}}
	for _, tc := range []struct {
		name        string
		scope       engineScope
		state       string
		ready       metav1.ConditionStatus
		reason      string
		reconciling bool
		progress    int32
	}{
		{"waiting for replicas", engineScope{waiting: "1 of 2 replicas listen"}, "Starting", metav1.ConditionFalse, "WaitingForReplicas", true, 0},
		{"opening", engineScope{running: true, proc: ProcState{Running: true, PID: 5}}, "Starting", metav1.ConditionFalse, "Starting", true, 0},
		{"running", engineScope{running: true, proc: ProcState{Running: true, PID: 5}, status: healthy, endpoint: "/dev/loop3"}, "Running", metav1.ConditionTrue, "Running", false, 0},
		{"rebuilding", engineScope{running: true, proc: ProcState{Running: true, PID: 5}, status: rebuilding, endpoint: "/dev/loop3"}, "Running", metav1.ConditionTrue, "Rebuilding", true, 25},
		{"crashed", engineScope{running: true, proc: ProcState{LastExit: "exit status 1"}}, "Error", metav1.ConditionFalse, "ProcessExited", true, 0},
		{"refused change", engineScope{running: true, proc: ProcState{Running: true, PID: 5}, status: healthy, endpoint: "/dev/loop3", memberErr: errors.New("last healthy")}, "Running", metav1.ConditionTrue, "ReplicaChangePending", true, 0},
		{"invalid", engineScope{err: reconcile.TerminalError(errors.New("size"))}, "Error", metav1.ConditionFalse, "InvalidSpec", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.scope
			s.obj = &cairnv1.Engine{ObjectMeta: metav1.ObjectMeta{Generation: 2}}
			setEngineStatus(&s, 5*time.Second)
			st := s.obj.Status
			require.Equal(t, tc.state, st.State)
			ready := apimeta.FindStatusCondition(st.Conditions, condReady)
			require.Equal(t, tc.ready, ready.Status)
			require.Equal(t, tc.reason, ready.Reason)
			require.Equal(t, tc.reconciling, apimeta.IsStatusConditionTrue(st.Conditions, condReconciling))
			require.Equal(t, tc.progress, st.RebuildProgress)
			if s.status != nil {
				require.Len(t, st.ReplicaModes, len(s.status.Replicas))
			}
		})
	}
}

func TestMemberChanges(t *testing.T) {
	st := &engine.Status{Replicas: []engine.ReplicaStatus{{Address: "a:1"}, {Address: "b:1"}}}
	add, remove := memberChanges([]string{"b:1", "c:1"}, st)
	require.Equal(t, []string{"c:1"}, add)
	require.Equal(t, []string{"a:1"}, remove)
	add, remove = memberChanges([]string{"a:1", "b:1"}, st)
	require.Empty(t, add)
	require.Empty(t, remove)
}

// TestKillLeftovers: a process recorded in a pid file is stopped (with its
// process group) only while its command line names the data directory and
// the instance; an unrelated process with a reused pid is left alone.
func TestKillLeftovers(t *testing.T) {
	dir := t.TempDir()
	start := func(args ...string) *exec.Cmd {
		cmd := exec.Command("sh", append([]string{"-c", "sleep 300", "sh"}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
		return cmd
	}
	ours := start(dir, "--replica", "r1", "--x")
	stranger := start("/elsewhere", "--replica", "r2", "--x")
	write := func(key string, pid int) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, key+".pid"), []byte(strconv.Itoa(pid)+"\n"), 0o600))
	}
	write("replica-r1", ours.Process.Pid)
	write("replica-r2", stranger.Process.Pid)
	exited := make(chan error, 1)
	go func() { exited <- ours.Wait() }()
	s := &Supervisor{RunDir: dir, Marker: dir, Log: logr.Discard()}
	require.NoError(t, s.KillLeftovers(t.Context(), markOfKey))
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("leftover child not stopped")
	}
	require.True(t, alive(stranger.Process.Pid), "unrelated process killed")
	files, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	require.Empty(t, files)
}
