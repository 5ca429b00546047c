// Package csi runs csi-sanity and the driver's error and idempotency
// tables against the real driver: `cairn dev` with two node agents, its
// CSI controller socket and dev-node-1's node socket, real replica and
// engine processes and real mounts on loop devices.
package csi

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/internal/testutil"
)

// The suite's cluster and the driver's sockets.
var (
	k8s            client.Client
	tmp            string
	devOut         *os.File
	controllerSock string // DATA/csi/controller.sock
	nodeSock       string // DATA/nodes/dev-node-1/csi.sock
	controller     csipb.ControllerClient
	node           csipb.NodeClient
	identity       csipb.IdentityClient
)

const (
	suiteNodes = 2
	// sanityNode is the node whose node service the tests drive.
	sanityNode = "dev-node-1"
	// backupTarget is the file:// BackupTarget backup-type snapshots use.
	backupTarget = "csi-sanity"
)

func TestMain(m *testing.M) { os.Exit(runSuite(m)) }

func runSuite(m *testing.M) int {
	ctrl.SetLogger(logr.Discard())
	if why := missing(); why != "" {
		fmt.Fprintln(os.Stderr, "csi:", why)
		if testutil.OnCI() {
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping the CSI suite (not on CI)")
		return 0
	}
	var err error
	// A short path: the node's socket paths must fit in sun_path.
	if tmp, err = os.MkdirTemp("", "ccsi-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	stop, err := startDev()
	if err != nil {
		fmt.Fprintln(os.Stderr, "csi:", err)
		return 1
	}
	code := m.Run()
	stopRestartedAgents()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "csi: stop cairn dev:", err)
		code = 1
	}
	return code
}

// missing names what the suite cannot run without, or "".
func missing() string {
	if os.Geteuid() != 0 {
		return "needs root (loop devices, FUSE, mounts)"
	}
	for _, tool := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(testutil.BinDir(), tool)); err != nil {
			return tool + " not built: run `make tools`"
		}
	}
	for _, tool := range []string{"losetup", "mount", "blkid", "mkfs.ext4", "mkfs.xfs", "resize2fs", "xfs_growfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not installed: run hack/install-deps.sh"
		}
	}
	return ""
}

// startDev builds cairn, starts `cairn dev`, reads its banner for the
// kubeconfig and CSI sockets, waits for the nodes and connects.
func startDev() (func() error, error) {
	bin := filepath.Join(tmp, "cairn")
	build := exec.Command("go", "build", "-o", bin, "./cmd/cairn")
	build.Dir = testutil.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %v: %s", err, out)
	}
	var err error
	if devOut, err = os.Create(filepath.Join(tmp, "dev.log")); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "dev", "--data-dir", filepath.Join(tmp, "dev"), "--bin-dir", testutil.BinDir(),
		"--samples=false", "--nodes", fmt.Sprint(suiteNodes), "--no-scheduler")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = devOut
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() error { return stopDev(cmd) }
	if err := connect(stdout); err != nil {
		_ = stop()
		return nil, fmt.Errorf("%w (log: %s)", err, devOut.Name())
	}
	return stop, nil
}

// stopDev interrupts cairn dev as a user would and waits for it.
func stopDev(cmd *exec.Cmd) error {
	_ = cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(2 * time.Minute):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return fmt.Errorf("cairn dev did not stop within 2 minutes of SIGINT")
	}
}

// connect parses the banner, makes the clients and waits until every node
// is Ready, the node service probes ready and the backup target exists.
func connect(stdout io.Reader) error {
	kubeconfig, err := readBanner(stdout)
	if err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: controllers.NewScheme()}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := waitNodes(ctx); err != nil {
		return err
	}
	if err := dial(); err != nil {
		return err
	}
	if err := waitProbe(ctx); err != nil {
		return err
	}
	bt := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: backupTarget}}
	bt.Spec.URL = "file://" + filepath.Join(tmp, "backups")
	return k8s.Create(ctx, bt)
}

// readBanner reads dev's output until it says it runs and returns the
// kubeconfig; it sets the CSI sockets from the "CSI" line.
func readBanner(stdout io.Reader) (string, error) {
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		kubeconfig := ""
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(devOut, line)
			f := strings.Fields(line)
			switch {
			case len(f) == 2 && f[0] == "kubeconfig":
				kubeconfig = f[1]
			case len(f) == 4 && f[0] == "CSI" && f[2] == "(nodes:":
				controllerSock = f[1]
				nodeSock = strings.Replace(strings.TrimSuffix(f[3], ")"), "NAME", sanityNode, 1)
			case strings.HasPrefix(line, "Press Ctrl-C to stop."):
				ready <- kubeconfig
			}
		}
		close(ready)
	}()
	select {
	case kc, ok := <-ready:
		if !ok {
			return "", fmt.Errorf("cairn dev exited before it was ready")
		}
		if controllerSock == "" {
			return "", fmt.Errorf("cairn dev printed no CSI line")
		}
		return kc, nil
	case <-time.After(5 * time.Minute):
		return "", fmt.Errorf("cairn dev not ready after 5 minutes")
	}
}

func waitNodes(ctx context.Context) error {
	for {
		var nodes v1.CairnNodeList
		if err := k8s.List(ctx, &nodes); err == nil {
			ready := 0
			for _, n := range nodes.Items {
				if meta.IsStatusConditionTrue(n.Status.Conditions, v1.ConditionReady) {
					ready++
				}
			}
			if ready == suiteNodes {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d nodes not Ready within 2 minutes", suiteNodes)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// dial connects the suite's own clients to both sockets.
func dial() error {
	cc, err := grpc.NewClient("unix://"+controllerSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	nc, err := grpc.NewClient("unix://"+nodeSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	controller, node, identity = csipb.NewControllerClient(cc), csipb.NewNodeClient(nc), csipb.NewIdentityClient(nc)
	return nil
}

// waitProbe waits until both endpoints probe ready.
func waitProbe(ctx context.Context) error {
	cc, _ := grpc.NewClient("unix://"+controllerSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer cc.Close()
	for _, id := range []csipb.IdentityClient{identity, csipb.NewIdentityClient(cc)} {
		for {
			r, err := id.Probe(ctx, &csipb.ProbeRequest{})
			if err == nil && r.GetReady().GetValue() {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CSI probe not ready within 2 minutes: %v", err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

func clientKey(name string) client.ObjectKey { return client.ObjectKey{Name: name} }
