// Package e2e runs Cairn end to end: `cairn dev` with real node agents,
// `cairn replica` and `cairn engine` processes on temporary directories,
// FUSE-backed loop devices and fio against them.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/testutil"
)

// The suite's cluster: `cairn dev` with suiteNodes node agents, without
// its scheduler: TestScheduledRuns runs one with an injected clock.
var (
	k8s      client.Client
	restCfg  *rest.Config
	dataDir  string
	devOut   *os.File
	cairnBin string
	devRun   *testutil.Dev
	// restarted are node agents tests restarted; the suite stops them.
	restarted []*exec.Cmd
)

const suiteNodes = 4

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	ctrl.SetLogger(logr.Discard())
	if why := missing(); why != "" {
		fmt.Fprintln(os.Stderr, "e2e:", why)
		if testutil.OnCI() {
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping the end-to-end suite (not on CI)")
		return 0
	}
	tmp, err := os.MkdirTemp("", "cairn-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	stop, err := startDev(tmp)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		devRun.PrintLogTails(os.Stderr)
	}
	if err := checkEveryObjectsHealth(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		code = 1
	}
	for _, cmd := range restarted {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: stop cairn dev:", err)
		code = 1
	}
	return code
}

// missing names what the suite cannot run without, or "".
func missing() string {
	if os.Geteuid() != 0 {
		return "needs root (loop devices, FUSE)"
	}
	for _, tool := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(testutil.BinDir(), tool)); err != nil {
			return tool + " not built: run `make tools`"
		}
	}
	for _, tool := range []string{"fio", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not installed: run hack/install-deps.sh"
		}
	}
	return ""
}

// startDev starts `cairn dev` (testutil.StartDev) and waits until every
// node is Ready; the returned func stops it with SIGINT as a user would.
func startDev(tmp string) (func() error, error) {
	dev, err := testutil.StartDev(tmp, "--samples=false", "--nodes", fmt.Sprint(suiteNodes), "--no-scheduler")
	if err != nil {
		return nil, err
	}
	cairnBin, dataDir, devOut, devRun = dev.Bin, dev.DataDir, dev.Out, dev
	if err := connect(dev.Kubeconfig); err != nil {
		_ = dev.Stop()
		return nil, fmt.Errorf("%w (log: %s)", err, devOut.Name())
	}
	return dev.Stop, nil
}

// connect makes the suite's client and waits for every node to be Ready.
func connect(kubeconfig string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	restCfg = cfg
	// With CAIRN_RECORD_HEALTH set, every state the suite's objects pass
	// through is recorded for config's Argo CD health test.
	if err := testutil.StartHealthRecorder(context.Background(), cfg); err != nil {
		return err
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: controllers.NewScheme()}); err != nil {
		return err
	}
	return testutil.WaitNodesReady(k8s, suiteNodes, 2*time.Minute)
}

// checkEveryObjectsHealth reads every Cairn object the tests left (real
// statuses written by the real controllers and agents, never hand-written)
// with kstatus and with Argo CD's health script, and fails when they
// disagree.
func checkEveryObjectsHealth() error {
	crds, err := localcluster.CRDs()
	if err != nil {
		return err
	}
	var errs []error
	checked := 0
	for _, crd := range crds {
		list := &unstructured.UnstructuredList{}
		list.SetGroupVersionKind(schema.GroupVersionKind{Group: crd.Spec.Group, Version: "v1alpha1", Kind: crd.Spec.Names.ListKind})
		if err := k8s.List(context.Background(), list); err != nil {
			return err
		}
		for _, item := range list.Items {
			res, err := kstatus.Compute(&item)
			if err == nil {
				err = healthAgrees(item.Object, res.Status)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", item.GetKind(), item.GetName(), err))
			}
			checked++
		}
	}
	fmt.Fprintf(os.Stderr, "e2e: Argo CD and kstatus health agree on %d of %d objects\n", checked-len(errs), checked)
	return errors.Join(errs...)
}
