package validate_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/testutil"
	cairnwebhook "github.com/cairnstore/cairn/internal/webhook"
)

// k8s is a client of a real API server with Cairn's CRDs and webhook, the
// reference the offline validation is compared with.
var k8s client.Client

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	ctrl.SetLogger(logr.Discard())
	cluster, err := localcluster.Start(localcluster.Options{BinDir: testutil.BinDir()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "local cluster:", err)
		return 1
	}
	defer cluster.Stop()
	mgr, err := ctrl.NewManager(cluster.Config, ctrl.Options{
		Scheme:        controllers.NewScheme(),
		Metrics:       metricsserver.Options{BindAddress: "0"},
		WebhookServer: webhook.NewServer(cluster.WebhookOptions()),
	})
	if err == nil {
		err = cairnwebhook.Setup(mgr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	defer func() { cancel(); <-done }()
	for mgr.GetWebhookServer().StartedChecker()(nil) != nil {
		select {
		case err := <-done:
			fmt.Fprintln(os.Stderr, "manager stopped:", err)
			return 1
		case <-time.After(50 * time.Millisecond):
		}
	}
	if k8s, err = client.New(cluster.Config, client.Options{Scheme: mgr.GetScheme()}); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	return m.Run()
}
