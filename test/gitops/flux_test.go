package gitops

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/pkg/ssa"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/internal/validate"
)

// TestFluxAppliesProduction does what Flux's kustomize-controller does with
// examples/overlays/production: build it, server-side apply it with
// fluxcd/pkg/ssa in stages, wait with ssa's kstatus health check until
// every object is Current, and apply it again, which must change nothing.
//
// The production target is an S3 bucket in eu-central-1; the test points
// it at a local versitygw with a kustomization over the overlay (the one
// difference), and creates its credentials Secret out of band as the base
// expects.
func TestFluxAppliesProduction(t *testing.T) {
	srv := testutil.StartS3(t)
	ctx := context.Background()
	require.NoError(t, k8s.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: v1.SystemNamespace, Name: "s3-creds"},
		StringData: map[string]string{targets.SecretAccessKeyID: srv.AccessKey, targets.SecretSecretAccessKey: srv.SecretKey},
	}))
	dir := t.TempDir()
	overlay, err := filepath.Rel(dir, filepath.Join(testutil.RepoRoot(), "examples", "overlays", "production"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(fmt.Sprintf(`resources: [%q]
patches:
  - target: {kind: BackupTarget, name: primary}
    patch: |-
      - {op: add, path: /spec/endpoint, value: %q}
      - {op: replace, path: /spec/region, value: %q}
`, overlay, srv.Endpoint, srv.Region)), 0o644))
	ms, err := validate.Kustomize(dir)
	require.NoError(t, err)
	objs := make([]*unstructured.Unstructured, len(ms))
	kinds := map[string]bool{}
	for i, m := range ms {
		objs[i] = m.Object
		kinds[m.Object.GetKind()] = true
	}
	require.Equal(t, map[string]bool{"BackupTarget": true, "RecurringSnapshot": true, "VolumePolicy": true}, kinds)

	rm := ssa.NewResourceManager(k8s, polling.NewStatusPoller(k8s, k8s.RESTMapper(), polling.Options{}),
		ssa.Owner{Field: "kustomize-controller", Group: "kustomize.toolkit.fluxcd.io"})
	cs, err := rm.ApplyAllStaged(ctx, objs, ssa.DefaultApplyOptions())
	require.NoError(t, err)
	require.Len(t, cs.Entries, len(objs))
	for _, e := range cs.Entries {
		require.Equal(t, ssa.CreatedAction, e.Action, e.Subject)
	}

	// Flux's health check: every object kstatus-Current.
	require.NoError(t, rm.WaitForSet(cs.ToObjMetadataSet(), ssa.WaitOptions{Interval: time.Second, Timeout: 3 * time.Minute}))

	// The next sync, after the controllers wrote their status: zero drift.
	cs, err = rm.ApplyAllStaged(ctx, objs, ssa.DefaultApplyOptions())
	require.NoError(t, err)
	require.Len(t, cs.Entries, len(objs))
	for _, e := range cs.Entries {
		require.Equal(t, ssa.UnchangedAction, e.Action, e.Subject)
	}
}
