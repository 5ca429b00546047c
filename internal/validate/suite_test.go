package validate_test

import (
	"context"
	"os"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/internal/testutil"
)

// k8s is a client of a real API server with Cairn's CRDs and webhook, the
// reference the offline validation is compared with.
var k8s client.Client

func TestMain(m *testing.M) {
	os.Exit(testutil.RunEnvtest(m, "validate suite", testutil.EnvtestOptions{
		Ready: func(_ context.Context, env *testutil.Envtest) error {
			k8s = env.Client
			return nil
		},
	}))
}
