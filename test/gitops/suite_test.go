// Package gitops tests the example GitOps repository the way Flux syncs
// it, against a local API server running Cairn's manager (every
// reconciler and the webhook) in this process.
package gitops

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/testutil"
	cairnwebhook "github.com/cairnstore/cairn/internal/webhook"
)

// k8s is a client of the suite's API server.
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
		Cache:         controllers.CacheOptions(),
		Metrics:       metricsserver.Options{BindAddress: "0"},
		WebhookServer: webhook.NewServer(cluster.WebhookOptions()),
	})
	if err == nil {
		err = cairnwebhook.Setup(mgr)
	}
	if err == nil {
		err = controllers.Setup(mgr)
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
	// With CAIRN_RECORD_HEALTH set, every state the suite's objects pass
	// through is recorded for config's Argo CD health test.
	if err := testutil.StartHealthRecorder(ctx, cluster.Config); err != nil {
		fmt.Fprintln(os.Stderr, "health recorder:", err)
		return 1
	}
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: v1.SystemNamespace}}); err != nil {
		fmt.Fprintln(os.Stderr, "namespace:", err)
		return 1
	}
	return m.Run()
}
