package node_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/controllers/node"
	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/testutil"
)

// The suite runs one local control plane and one node agent, "n1", in this
// process; its children are the real cairn binary built once here.
const nodeName = "n1"

var (
	k8s     client.Client
	dataDir string
	binary  string
	// kubeconfig is an admin kubeconfig file for agents run as processes.
	kubeconfig string
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	log := logr.Discard()
	if testing.Verbose() {
		zl, _ := zap.NewDevelopment()
		log = zapr.NewLogger(zl)
	}
	ctrl.SetLogger(log)
	tmp, err := os.MkdirTemp("", "cairn-node-suite-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	binary = filepath.Join(tmp, "cairn")
	build := exec.Command("go", "build", "-o", binary, "./cmd/cairn")
	build.Dir = testutil.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build cairn: %v\n%s", err, out)
		return 1
	}
	cluster, err := localcluster.Start(localcluster.Options{BinDir: testutil.BinDir()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "local cluster:", err)
		if testutil.OnCI() {
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping the node agent suite (not on CI)")
		return 0
	}
	defer cluster.Stop()
	k8s, err = client.New(cluster.Config, client.Options{Scheme: node.NewScheme()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	kc, err := cluster.Kubeconfig("node-agent")
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeconfig:", err)
		return 1
	}
	kubeconfig = filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: node.SystemNamespace}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		fmt.Fprintln(os.Stderr, "namespace:", err)
		return 1
	}
	dataDir = filepath.Join(tmp, nodeName)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- node.Run(ctx, cluster.Config, node.Options{
			Name: nodeName, DataDir: dataDir, Zone: "zone-a", Binary: binary,
			HeartbeatInterval: time.Second, PollInterval: time.Second, Log: log.WithName("agent"),
		})
	}()
	code := m.Run()
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "node agent:", err)
		code = 1
	}
	return code
}
