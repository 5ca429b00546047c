package webhook_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/testutil"
)

// TestExamplesApply builds every overlay of the example GitOps repository
// with kustomize, applies it to the real API server (CEL and webhook
// included) and applies it again, which must not change any spec.
func TestExamplesApply(t *testing.T) {
	ctx := context.Background()
	root := os.DirFS(filepath.Join(testutil.RepoRoot(), "examples"))
	for _, overlay := range []string{"staging", "production", "dr-site", "dev-primary", "dev-dr-site"} {
		t.Run(overlay, func(t *testing.T) {
			objs, err := localcluster.Build(root, "overlays/"+overlay)
			require.NoError(t, err)
			require.NotEmpty(t, objs)
			manager := "examples-" + overlay
			require.NoError(t, localcluster.Apply(ctx, k8s, manager, objs))
			specs := map[string]any{}
			for _, o := range objs {
				got := &unstructured.Unstructured{}
				got.SetGroupVersionKind(o.GroupVersionKind())
				require.NoError(t, k8s.Get(ctx, client.ObjectKeyFromObject(o), got))
				specs[o.GetKind()+"/"+o.GetNamespace()+"/"+o.GetName()] = got.Object["spec"]
			}
			require.NoError(t, localcluster.Apply(ctx, k8s, manager, objs))
			for _, o := range objs {
				got := &unstructured.Unstructured{}
				got.SetGroupVersionKind(o.GroupVersionKind())
				require.NoError(t, k8s.Get(ctx, client.ObjectKeyFromObject(o), got))
				require.Equal(t, specs[o.GetKind()+"/"+o.GetNamespace()+"/"+o.GetName()], got.Object["spec"])
			}
			// Clean up so the next overlay's objects (same names) start fresh.
			for _, o := range objs {
				if o.GetKind() != "Namespace" {
					require.NoError(t, client.IgnoreNotFound(k8s.Delete(ctx, o)))
				}
			}
		})
	}
}
