// Package dr runs disaster recovery end to end across two local clusters:
// `cairn dev --dr-site` starts site A (the primary: etcd, kube-apiserver,
// kube-controller-manager, the manager, node agents) and site B (the same,
// its manager a child process, under DATA/dr-site), both using the one
// versitygw dev runs. Volumes written through A's block devices are backed
// up to the shared bucket; B's DisasterRecoveryVolumes follow and activate.
package dr

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// site is one of the two clusters.
type site struct {
	name       string
	k8s        client.Client
	kubeconfig string
	dir        string // its data directory (nodes under dir/nodes)
}

var (
	siteA, siteB *site
	dataDir      string
	cairnBin     string
	s3Endpoint   string
	metricsB     string // URL of B's manager metrics
	devOut       *os.File
	// started are processes tests started again (agents, B's manager);
	// the suite stops them.
	started []*exec.Cmd
)

const suiteNodes = 2

func TestMain(m *testing.M) { os.Exit(runSuite(m)) }

func runSuite(m *testing.M) int {
	ctrl.SetLogger(logr.Discard())
	if why := missing(); why != "" {
		fmt.Fprintln(os.Stderr, "e2e/dr:", why)
		if testutil.OnCI() {
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping the DR end-to-end suite (not on CI)")
		return 0
	}
	tmp, err := os.MkdirTemp("", "cairn-e2e-dr-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	stop, err := startDev(tmp)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/dr:", err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		printLogTails()
	}
	for _, cmd := range started {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/dr: stop cairn dev:", err)
		code = 1
	}
	return code
}

// missing names what the suite cannot run without, or "".
func missing() string {
	if os.Geteuid() != 0 {
		return "needs root (loop devices, FUSE)"
	}
	for _, tool := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "versitygw"} {
		if _, err := os.Stat(filepath.Join(testutil.BinDir(), tool)); err != nil {
			return tool + " not built: run `make tools`"
		}
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		return "losetup not installed: run hack/install-deps.sh"
	}
	return ""
}

// startDev starts `cairn dev --dr-site` through testutil.StartDev and
// waits until both sites' nodes are Ready; the returned func stops it with
// SIGINT.
func startDev(tmp string) (func() error, error) {
	dev, err := testutil.StartDev(tmp, "--samples=false", "--nodes", fmt.Sprint(suiteNodes), "--dr-site")
	if err != nil {
		return nil, err
	}
	cairnBin, dataDir, devOut = dev.Bin, dev.DataDir, dev.Out
	s3Endpoint = strings.Fields(dev.Banner["S3 target"] + " ")[0]
	metricsB = dev.Banner["dr-site metrics"]
	siteA, err = connect("A", dev.Kubeconfig, dataDir)
	if err == nil {
		siteB, err = connect("B", dev.Banner["dr-site kubeconfig"], filepath.Join(dataDir, "dr-site"))
	}
	if err != nil {
		_ = dev.Stop()
		return nil, fmt.Errorf("%w (log: %s)", err, devOut.Name())
	}
	return dev.Stop, nil
}

// connect makes a site's client and waits for its nodes to be Ready.
func connect(name, kubeconfig, dir string) (*site, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("site %s kubeconfig %q: %w", name, kubeconfig, err)
	}
	c, err := client.New(cfg, client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		return nil, err
	}
	// With CAIRN_RECORD_HEALTH set, every state the site's objects pass
	// through is recorded for config's Argo CD health test.
	if err := testutil.StartHealthRecorder(context.Background(), cfg); err != nil {
		return nil, err
	}
	if err := testutil.WaitNodesReady(c, suiteNodes, 3*time.Minute); err != nil {
		return nil, fmt.Errorf("site %s: %w", name, err)
	}
	return &site{name: name, k8s: c, kubeconfig: kubeconfig, dir: dir}, nil
}

// printLogTails prints the end of both sites' agent and manager logs.
func printLogTails() {
	var logs []string
	for _, pattern := range []string{"nodes/*/node.log", "dr-site/nodes/*/node.log", "dr-site/manager.log"} {
		m, _ := filepath.Glob(filepath.Join(dataDir, pattern))
		logs = append(logs, m...)
	}
	logs = append(logs, devOut.Name())
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		fmt.Fprintf(os.Stderr, "==> %s (last %d of %d lines) <==\n%s\n", l, min(20, len(lines)), len(lines), strings.Join(lines[max(0, len(lines)-20):], "\n"))
	}
}
