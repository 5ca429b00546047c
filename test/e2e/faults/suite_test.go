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
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/internal/netns"
	"github.com/cairnstore/cairn/internal/testutil"
)

const suiteNodes = 4

var (
	dev     *testutil.Dev
	k8s     client.Client
	network *netns.Network
	// drK8s is the dr-site's client when dev runs one (devArgs).
	drK8s client.Client
)

func TestMain(m *testing.M) { os.Exit(runSuite(m)) }

func runSuite(m *testing.M) int {
	ctrl.SetLogger(logr.Discard())
	if why := missing(); why != "" {
		fmt.Fprintln(os.Stderr, "faults:", why)
		if testutil.OnCI() {
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping the fault suite (not on CI)")
		return 0
	}
	tmp, err := os.MkdirTemp("", "cairn-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	args := append([]string{"--samples=false", "--netns", "--manager-process", "--nodes", fmt.Sprint(suiteNodes), "--no-scheduler"}, devArgs...)
	if dev, err = testutil.StartDev(tmp, args...); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	code := 1
	if err := connect(); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
	} else {
		code = m.Run()
	}
	if code != 0 {
		dev.PrintLogTails(os.Stderr)
	}
	restartedMu.Lock()
	stopRestarted()
	restartedMu.Unlock()
	if err := dev.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "faults: stop cairn dev:", err)
		code = 1
	}
	if err := leftAfterStop(); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		code = 1
	}
	if err := printReport(); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		code = 1
	}
	return code
}

// missing names what the suite cannot run without, or "".
func missing() string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces, loop devices, FUSE)"
	}
	for _, tool := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(testutil.BinDir(), tool)); err != nil {
			return tool + " not built: run `make tools`"
		}
	}
	for _, tool := range []string{"fio", "losetup", "ip", "nsenter", "mkfs.ext4", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not installed: run hack/install-deps.sh"
		}
	}
	return ""
}

// connect makes the suite's client, loads dev's network and waits for
// every node to be Ready.
func connect() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", dev.Kubeconfig)
	if err != nil {
		return err
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: controllers.NewScheme()}); err != nil {
		return err
	}
	if path := dev.Banner["dr-site kubeconfig"]; path != "" {
		drCfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return err
		}
		if drK8s, err = client.New(drCfg, client.Options{Scheme: controllers.NewScheme()}); err != nil {
			return err
		}
	}
	if network, err = netns.Load(filepath.Join(dev.DataDir, "network.json")); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		if readyNodes(ctx) == suiteNodes {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d nodes not Ready within 2 minutes", suiteNodes)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func readyNodes(ctx context.Context) int {
	var nodes v1.CairnNodeList
	if err := k8s.List(ctx, &nodes); err != nil {
		return 0
	}
	ready := 0
	for _, n := range nodes.Items {
		if meta.IsStatusConditionTrue(n.Status.Conditions, v1.ConditionReady) {
			ready++
		}
	}
	return ready
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
	if pids := procs(); len(pids) > 0 {
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
