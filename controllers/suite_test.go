package controllers_test

import (
	"context"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/internal/testutil"
)

// k8s is a client of the suite's real API server; the manager in this
// process runs every reconciler and the webhook. Node agents are played by
// the tests (heartbeat Leases and status patches), so these tests cover the
// manager's decisions; test/e2e runs real agents.
var k8s client.Client

func TestMain(m *testing.M) {
	os.Exit(testutil.RunEnvtest(m, "controller suite", testutil.EnvtestOptions{
		Cache: controllers.CacheOptions(),
		Setup: func(mgr ctrl.Manager) error { return controllers.Setup(mgr) },
		Ready: func(ctx context.Context, env *testutil.Envtest) error {
			k8s = env.Client
			return k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: v1.SystemNamespace}})
		},
	}))
}
