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

	"github.com/chromedp/chromedp"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/testutil"
)

// The suite's cluster and browser.
var (
	k8s       client.Client
	vols      testutil.Volumes
	dev       *testutil.DevSuite
	baseURL   string // the dashboard, from dev's "dashboard" line
	secret    string // the trusted proxy's secret
	browser   context.Context
	artifacts string
	// stopBrowser stops the browser setup started, if any.
	stopBrowser = func() {}
)

const (
	suiteNodes = 3
	// operator may create Cairn's on-demand objects (a ClusterRole the
	// suite binds); mallory may not.
	operator = "operator@example.com"
	mallory  = "mallory@example.com"
)

func TestMain(m *testing.M) {
	os.Exit(testutil.RunDevSuite(m, "dashboard browser suite", testutil.DevSuiteOptions{
		RootFor:    "loop devices, FUSE",
		Bin:        []string{"versitygw"},
		Tools:      []string{"chromium"},
		TempPrefix: "cairn-dashboard-",
		Args:       []string{"--nodes", fmt.Sprint(suiteNodes)},
		Prepare:    writeSecret,
		Nodes:      suiteNodes,
		Setup:      setup,
		Teardown:   func(*testutil.DevSuite, bool) error { stopBrowser(); return nil },
	}))
}

// writeSecret writes the trusted proxy's secret into tmp for dev's
// --dashboard-proxy-secret-file.
func writeSecret(tmp string) ([]string, error) {
	secret = randomHex(24)
	secretFile := filepath.Join(tmp, "proxy-secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		return nil, err
	}
	return []string{"--dashboard-proxy-secret-file", secretFile}, nil
}

// setup checks dev's dashboard line, grants the operator's RBAC and starts
// one headless browser.
func setup(s *testutil.DevSuite) error {
	dev, k8s = s, s.Site.Client
	vols = testutil.Volumes{Client: k8s, Wait: wait, Tick: tick}
	baseURL = strings.TrimSuffix(dev.Banner["dashboard"], "/")
	if !strings.HasPrefix(baseURL, "http://127.0.0.1:") {
		return fmt.Errorf("cairn dev printed no loopback dashboard line: %q", dev.Banner["dashboard"])
	}
	if err := bindOperator(); err != nil {
		return err
	}
	var err error
	if artifacts, err = artifactsDir(); err != nil {
		return err
	}
	return startBrowser()
}

// startBrowser starts chromium once, so tests only open tabs.
func startBrowser() error {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		return err
	}
	ctx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1400, 1000))...)
	var cancel context.CancelFunc
	browser, cancel = chromedp.NewContext(ctx)
	stopBrowser = func() { cancel(); cancelAlloc() }
	if err := chromedp.Do(browser); err != nil {
		return fmt.Errorf("start chromium: %w", err)
	}
	return nil
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
