// Package faults runs Cairn through network partitions, full disks and
// crashes on a `cairn dev --netns` cluster: every simulated node in its own
// network namespace, so cutting a node's link is a real partition. Each
// scenario keeps fio --verify=crc32c writing the volume throughout, checks
// that flushed data verifies, that the cluster ends healthy and that
// nothing is leaked, and reports (never asserts) time to detect, time to
// heal and bytes resynced.
//
// Scenarios cut links and fill disks that every volume shares, so they run
// one after another, never in parallel.
package faults

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/internal/netns"
	"github.com/cairnstore/cairn/internal/testutil"
)

const suiteNodes = 4

var (
	dev     *testutil.DevSuite
	k8s     client.Client
	vols    testutil.Volumes
	network *netns.Network
	// drK8s is the dr-site's client when dev runs one (devArgs).
	drK8s client.Client
)

func TestMain(m *testing.M) {
	os.Exit(testutil.RunDevSuite(m, "fault suite", testutil.DevSuiteOptions{
		RootFor:           "network namespaces, loop devices, FUSE",
		Tools:             []string{"fio", "losetup", "ip", "nsenter", "mkfs.ext4", "iptables"},
		TempPrefix:        "cairn-faults-",
		Args:              append([]string{"--samples=false", "--netns", "--manager-process", "--nodes", fmt.Sprint(suiteNodes), "--no-scheduler"}, devArgs...),
		Nodes:             suiteNodes,
		LogTailsOnFailure: true,
		Setup:             setup,
		AfterStop: func(*testutil.DevSuite, bool) error {
			return errors.Join(leftAfterStop(), printReport())
		},
	}))
}

// setup keeps the suite's clients and loads dev's network.
func setup(s *testutil.DevSuite) error {
	dev, k8s = s, s.Site.Client
	vols = testutil.Volumes{Client: k8s, Wait: wait, Tick: tick}
	if s.DRSite != nil {
		drK8s = s.DRSite.Client
	}
	var err error
	network, err = netns.Load(filepath.Join(dev.DataDir, "network.json"))
	return err
}

// figures is one scenario's row of the report.
type figures struct {
	scenario       string
	detect, heal   time.Duration
	bytesResynced  int64
	resyncReported bool
}

var (
	reportMu sync.Mutex
	report   []figures
)

// record logs a scenario's figures and keeps them for the table.
func record(t *testing.T, f figures) {
	t.Helper()
	f.scenario = t.Name()
	t.Logf("time to detect %v, time to heal %v, bytes resynced %s", f.detect.Round(time.Millisecond), f.heal.Round(time.Millisecond), f.resynced())
	reportMu.Lock()
	defer reportMu.Unlock()
	report = append(report, f)
}

func (f figures) resynced() string {
	if !f.resyncReported {
		return "-"
	}
	return fmt.Sprint(f.bytesResynced)
}

// printReport writes the table of figures to $CAIRN_FAULTS_TABLE (make
// faults prints it), or to stderr.
func printReport() error {
	var w io.Writer = os.Stderr
	if path := os.Getenv("CAIRN_FAULTS_TABLE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	sort.Slice(report, func(i, j int) bool { return report[i].scenario < report[j].scenario })
	fmt.Fprintf(w, "%-44s %16s %16s %16s\n", "scenario", "time to detect", "time to heal", "bytes resynced")
	fmt.Fprintln(w, strings.Repeat("-", 95))
	for _, f := range report {
		fmt.Fprintf(w, "%-44s %16s %16s %16s\n", f.scenario, dur(f.detect), dur(f.heal), f.resynced())
	}
	return nil
}

func dur(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(10 * time.Millisecond).String()
}

// leftAfterStop names what a stopped dev left: processes of its data
// directory, network namespaces or links of its network.
func leftAfterStop() error {
	var left []string
	if pids := dev.Procs(); len(pids) > 0 {
		left = append(left, fmt.Sprintf("processes %v", pids))
	}
	tag := netns.Tag(dev.DataDir)
	nss, _ := os.ReadDir("/run/netns")
	for _, e := range nss {
		if strings.HasPrefix(e.Name(), "cairn-"+tag) {
			left = append(left, "namespace "+e.Name())
		}
	}
	links, _ := net.Interfaces()
	for _, l := range links {
		if strings.Contains(l.Name, tag) {
			left = append(left, "link "+l.Name)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("cairn dev left after it stopped: %s", strings.Join(left, ", "))
	}
	return nil
}
