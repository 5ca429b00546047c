package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

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
	os.Exit(testutil.RunDevSuite(m, "cairnctl suite", testutil.DevSuiteOptions{
		RootFor:      "loop devices, FUSE for the node agents of cairn dev",
		Tools:        []string{"losetup"},
		TempPrefix:   "cairnctl-test-",
		Args:         []string{"--samples=false", "--nodes", fmt.Sprint(suiteNodes), "--no-scheduler"},
		RecordHealth: true,
		Setup: func(s *testutil.DevSuite) error {
			suiteTmp, kubeconfig, k8s = s.Tmp, s.Kubeconfig, s.Site.Client
			return nil
		},
	}))
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
