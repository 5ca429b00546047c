package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/internal/testutil"
)

// The suite runs every cairnctl command against a real `cairn dev`: the
// local control plane, the manager and suiteNodes node agents running
// replica and engine processes on FUSE-backed loop devices.
var (
	k8s        client.Client
	kubeconfig string
	suiteTmp   string
)

const (
	suiteNodes    = 3
	waitFor, tick = 3 * time.Minute, 250 * time.Millisecond
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	ctrl.SetLogger(logr.Discard())
	if why := missing(); why != "" {
		fmt.Fprintln(os.Stderr, "cairnctl suite:", why)
		if testutil.OnCI() {
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping the cairnctl suite (not on CI)")
		return 0
	}
	var err error
	if suiteTmp, err = os.MkdirTemp("", "cairnctl-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(suiteTmp)
	stop, err := startDev(suiteTmp)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cairnctl suite:", err)
		return 1
	}
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "cairnctl suite: stop cairn dev:", err)
		code = 1
	}
	return code
}

func missing() string {
	if os.Geteuid() != 0 {
		return "needs root (loop devices, FUSE for the node agents of cairn dev)"
	}
	for _, tool := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(testutil.BinDir(), tool)); err != nil {
			return tool + " not built: run `make tools`"
		}
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		return "losetup not installed: run hack/install-deps.sh"
	}
	return ""
}

// startDev builds cairn and runs `cairn dev` (no samples, no scheduler)
// until it prints that it is ready; the returned func stops it with SIGINT.
func startDev(tmp string) (func() error, error) {
	bin := filepath.Join(tmp, "cairn")
	build := exec.Command("go", "build", "-o", bin, "./cmd/cairn")
	build.Dir = testutil.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %v: %s", err, out)
	}
	logf, err := os.Create(filepath.Join(tmp, "dev.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "dev", "--data-dir", filepath.Join(tmp, "dev"), "--bin-dir", testutil.BinDir(),
		"--samples=false", "--nodes", fmt.Sprint(suiteNodes), "--no-scheduler")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGINT)
		return cmd.Wait()
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		kc := ""
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "kubeconfig" {
				kc = f[1]
			}
			if strings.HasPrefix(sc.Text(), "Press Ctrl-C to stop.") {
				ready <- kc
			}
		}
		close(ready)
	}()
	kc, ok := <-ready
	if !ok {
		_ = stop()
		return nil, fmt.Errorf("cairn dev exited before it was ready (log: %s)", logf.Name())
	}
	kubeconfig = kc
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err == nil {
		k8s, err = client.New(cfg, client.Options{Scheme: controllers.NewScheme()})
	}
	if err == nil {
		// With CAIRN_RECORD_HEALTH set, every state the suite's objects
		// pass through is recorded for config's Argo CD health test.
		err = testutil.StartHealthRecorder(context.Background(), cfg)
	}
	if err != nil {
		_ = stop()
		return nil, err
	}
	return stop, nil
}

// result is one cairnctl run.
type result struct {
	stdout, stderr string
	code           int
}

// ctl runs cairnctl against the suite's cluster.
func ctl(t *testing.T, args ...string) result {
	t.Helper()
	return ctlRaw(t, append(args, "--kubeconfig", kubeconfig)...)
}

// ctlRaw runs cairnctl with exactly args.
func ctlRaw(t *testing.T, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return result{out.String(), errOut.String(), code}
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
