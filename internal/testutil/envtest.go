package testutil

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/localcluster"
	cairnwebhook "github.com/cairnstore/cairn/internal/webhook"
)

// Envtest is a running envtest suite: a local control plane with Cairn's
// CRDs and a manager in the test process serving Cairn's webhook.
type Envtest struct {
	Cluster *localcluster.Cluster
	Manager ctrl.Manager
	// Client reads from the API server directly, not through the cache.
	Client client.WithWatch
}

// EnvtestOptions says what a suite's manager runs besides the webhook.
type EnvtestOptions struct {
	// Cache is the manager's cache configuration.
	Cache cache.Options
	// Setup adds the suite's reconcilers to the manager before it starts.
	Setup func(ctrl.Manager) error
	// Ready runs once the webhook serves, before the tests (the suite keeps
	// the client, creates namespaces...).
	Ready func(context.Context, *Envtest) error
}

// RunEnvtest runs m against a local control plane (etcd, kube-apiserver,
// Cairn's CRDs and webhooks) and a manager in this process, and returns
// the exit code. Control plane binaries not built skip the suite, except
// on CI where they fail it. CAIRN_TEST_LOG=1 logs the manager to stderr.
func RunEnvtest(m *testing.M, suite string, opts EnvtestOptions) int {
	if os.Getenv("CAIRN_TEST_LOG") != "" {
		ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	} else {
		ctrl.SetLogger(logr.Discard())
	}
	cluster, err := localcluster.Start(localcluster.Options{BinDir: BinDir()})
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: local control plane: %v\n", suite, err)
		if OnCI() || !errors.Is(err, localcluster.ErrMissingBinary) {
			return 1
		}
		fmt.Fprintf(os.Stderr, "skipping the %s (not on CI)\n", suite)
		return 0
	}
	defer cluster.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	env, stop, err := startEnvtestManager(ctx, cluster, opts)
	defer func() {
		cancel()
		if stop != nil {
			stop()
		}
	}()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", suite, err)
		return 1
	}
	if opts.Ready != nil {
		if err := opts.Ready(ctx, env); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", suite, err)
			return 1
		}
	}
	return m.Run()
}

// EnvtestScheme is the scheme of Cairn's manager: client-go's kinds and
// Cairn's.
func EnvtestScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(v1.AddToScheme(s))
	return s
}

// startEnvtestManager starts a manager with the webhook and opts.Setup's
// reconcilers and waits until the webhook serves; stop waits for the
// manager to return after ctx ends.
func startEnvtestManager(ctx context.Context, cluster *localcluster.Cluster, opts EnvtestOptions) (*Envtest, func(), error) {
	scheme := EnvtestScheme()
	mgr, err := ctrl.NewManager(cluster.Config, ctrl.Options{
		Scheme:        scheme,
		Cache:         opts.Cache,
		Metrics:       metricsserver.Options{BindAddress: "0"},
		WebhookServer: webhook.NewServer(cluster.WebhookOptions()),
	})
	if err == nil {
		err = cairnwebhook.Setup(mgr)
	}
	if err == nil && opts.Setup != nil {
		err = opts.Setup(mgr)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("manager: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	for mgr.GetWebhookServer().StartedChecker()(nil) != nil {
		select {
		case err := <-done:
			return nil, nil, fmt.Errorf("manager stopped: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	stop := func() { <-done }
	c, err := client.NewWithWatch(cluster.Config, client.Options{Scheme: scheme})
	if err != nil {
		return nil, stop, fmt.Errorf("client: %w", err)
	}
	return &Envtest{Cluster: cluster, Manager: mgr, Client: c}, stop, nil
}
