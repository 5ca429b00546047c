package webhook_test

import (
	"context"
	"os"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/internal/testutil"
)

// k8s is a client of the suite's real API server, with the webhook served
// by a manager in this process.
var k8s client.Client

func TestMain(m *testing.M) {
	os.Exit(testutil.RunEnvtest(m, "API validation suite", testutil.EnvtestOptions{
		Ready: func(_ context.Context, env *testutil.Envtest) error {
			k8s = env.Client
			return nil
		},
	}))
}
