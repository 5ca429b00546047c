package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
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

// startDev runs `cairn dev` (no samples, no scheduler) through
// testutil.StartDev (whose error ends with dev's last output lines) and
// connects the suite's client; the returned func stops dev with SIGINT.
func startDev(tmp string) (func() error, error) {
	dev, err := testutil.StartDev(tmp, "--samples=false", "--nodes", fmt.Sprint(suiteNodes), "--no-scheduler")
	if err != nil {
		return nil, err
	}
	kubeconfig = dev.Kubeconfig
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err == nil {
		k8s, err = client.New(cfg, client.Options{Scheme: controllers.NewScheme()})
	}
	if err == nil {
		// With CAIRN_RECORD_HEALTH set, every state the suite's objects
		// pass through is recorded for config's Argo CD health test.
		err = testutil.StartHealthRecorder(context.Background(), cfg)
	}
	if err != nil {
		_ = dev.Stop()
		return nil, err
	}
	return dev.Stop, nil
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
