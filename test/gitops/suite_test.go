// Package gitops tests the example GitOps repository the way Flux syncs
// it, against a local API server running Cairn's manager (every
// reconciler and the webhook) in this process.
package gitops

import (
	"context"
	"fmt"
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

// k8s is a client of the suite's API server.
var k8s client.Client

func TestMain(m *testing.M) {
	os.Exit(testutil.RunEnvtest(m, "gitops suite", testutil.EnvtestOptions{
		Cache: controllers.CacheOptions(),
		Setup: func(mgr ctrl.Manager) error { return controllers.Setup(mgr) },
		Ready: func(ctx context.Context, env *testutil.Envtest) error {
			k8s = env.Client
			// With CAIRN_RECORD_HEALTH set, every state the suite's objects
			// pass through is recorded for config's Argo CD health test.
			if err := testutil.StartHealthRecorder(ctx, env.Cluster.Config); err != nil {
				return fmt.Errorf("health recorder: %w", err)
			}
			return k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: v1.SystemNamespace}})
		},
	}))
}
