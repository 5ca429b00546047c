// Package dashboard_test drives the web dashboard in headless Chromium
// (chromedp) against `cairn dev` with real node agents, replica and
// engine processes and a versitygw backup target.
package dashboard_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/go-logr/logr"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/internal/testutil"
)

// The suite's cluster and browser.
var (
	k8s       client.Client
	dev       *testutil.Dev
	baseURL   string // the dashboard, from dev's "dashboard" line
	secret    string // the trusted proxy's secret
	browser   context.Context
	artifacts string
)

const (
	suiteNodes = 3
	// operator may create Cairn's on-demand objects (a ClusterRole the
	// suite binds); mallory may not.
	operator = "operator@example.com"
	mallory  = "mallory@example.com"
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	ctrl.SetLogger(logr.Discard())
	chromium, why := missing()
	if why != "" {
		fmt.Fprintln(os.Stderr, "dashboard:", why)
		if testutil.OnCI() {
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping the dashboard browser suite (not on CI)")
		return 0
	}
	tmp, err := os.MkdirTemp("", "cairn-dashboard-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	stop, err := setup(tmp, chromium)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dashboard:", err)
		if stop != nil {
			stop()
		}
		return 1
	}
	code := m.Run()
	stop()
	return code
}

// missing returns chromium's path, or what the suite cannot run without.
func missing() (string, string) {
	if os.Geteuid() != 0 {
		return "", "needs root (loop devices, FUSE)"
	}
	for _, tool := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "versitygw"} {
		if _, err := os.Stat(filepath.Join(testutil.BinDir(), tool)); err != nil {
			return "", tool + " not built: run `make tools`"
		}
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		return "", "chromium not installed: apt-get install -y chromium (or run hack/install-deps.sh)"
	}
	return chromium, ""
}

// setup starts cairn dev with the samples and a trusted proxy secret, the
// operator's RBAC, and one headless browser; the returned func stops them.
func setup(tmp, chromium string) (func(), error) {
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	secret = randomHex(24)
	secretFile := filepath.Join(tmp, "proxy-secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		return nil, err
	}
	var err error
	dev, err = testutil.StartDev(tmp, "--nodes", fmt.Sprint(suiteNodes), "--dashboard-proxy-secret-file", secretFile)
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() {
		if err := dev.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "dashboard: stop cairn dev:", err)
		}
	})
	baseURL = strings.TrimSuffix(dev.Banner["dashboard"], "/")
	if !strings.HasPrefix(baseURL, "http://127.0.0.1:") {
		return stop, fmt.Errorf("cairn dev printed no loopback dashboard line: %q", dev.Banner["dashboard"])
	}
	if err := connect(dev.Banner["kubeconfig"]); err != nil {
		return stop, err
	}
	if err := bindOperator(); err != nil {
		return stop, err
	}
	if artifacts, err = artifactsDir(); err != nil {
		return stop, err
	}
	ctx, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1400, 1000))...)
	stops = append(stops, cancel)
	browser, cancel = chromedp.NewContext(ctx)
	stops = append(stops, cancel)
	// Start the browser once, so tests only open tabs.
	if err := chromedp.Do(browser); err != nil {
		return stop, fmt.Errorf("start chromium: %w", err)
	}
	return stop, nil
}

// artifactsDir is $ARTIFACTS/dashboard, else .cairn/test-artifacts/dashboard
// in the repository (ignored by git), emptied first.
func artifactsDir() (string, error) {
	root := os.Getenv("ARTIFACTS")
	if root == "" {
		root = filepath.Join(testutil.RepoRoot(), ".cairn", "test-artifacts")
	}
	dir := filepath.Join(root, "dashboard")
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	return dir, os.MkdirAll(dir, 0o755)
}

// connect makes the suite's client and waits for every node to be Ready.
func connect(kubeconfig string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: controllers.NewScheme()}); err != nil {
		return err
	}
	return testutil.WaitNodesReady(k8s, suiteNodes, 2*time.Minute)
}

// bindOperator lets operator create what the dashboard's actions create,
// as docs/dashboard.md tells an administrator to.
func bindOperator() error {
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "cairn-dashboard-operator"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{v1.GroupVersion.Group}, Resources: []string{"snapshots", "backups", "volumes"}, Verbs: []string{"create"}},
		{APIGroups: []string{v1.GroupVersion.Group}, Resources: []string{"volumes"}, Verbs: []string{"delete"}},
	}}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "cairn-dashboard-operator"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: operator}}}
	ctx := context.Background()
	if err := k8s.Create(ctx, role); err != nil {
		return err
	}
	return k8s.Create(ctx, binding)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
