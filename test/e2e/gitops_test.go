package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/pkg/ssa"
	ssautil "github.com/fluxcd/pkg/ssa/utils"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// gitopsManifests is what a platform team commits: a policy and a volume.
const gitopsManifests = `
apiVersion: storage.cairn.dev/v1alpha1
kind: VolumePolicy
metadata:
  name: e2e-flux
spec:
  replicas: 2
  selector:
    matchLabels: {app: flux}
  storageClass:
    name: e2e-flux
---
apiVersion: storage.cairn.dev/v1alpha1
kind: Volume
metadata:
  name: e2e-flux
  labels: {app: flux}
spec:
  size: 64Mi
`

// TestServerSideApplyNoDrift applies the manifests as Flux does
// (fluxcd/pkg/ssa), waits with its kstatus health check until every object
// is Current, and applies them again: every object must be unchanged, so
// the controllers write nothing a GitOps tool would call drift.
func TestServerSideApplyNoDrift(t *testing.T) {
	rm := newResourceManager(t)
	first, err := rm.ApplyAll(bg, parseManifests(t), ssa.DefaultApplyOptions())
	require.NoError(t, err)
	require.NoError(t, rm.WaitForSet(first.ToObjMetadataSet(), ssa.WaitOptions{Interval: time.Second, Timeout: wait}))
	again, err := rm.ApplyAll(bg, parseManifests(t), ssa.DefaultApplyOptions())
	require.NoError(t, err)
	require.Len(t, again.Entries, 2)
	for _, e := range again.Entries {
		require.Equal(t, ssa.UnchangedAction, e.Action, "%s drifted after reconciliation", e.Subject)
	}
	for _, o := range parseManifests(t) {
		require.NoError(t, client.IgnoreNotFound(k8s.Delete(bg, o)))
	}
}

func newResourceManager(t *testing.T) *ssa.ResourceManager {
	t.Helper()
	poller := polling.NewStatusPoller(k8s, k8s.RESTMapper(), polling.Options{})
	return ssa.NewResourceManager(k8s, poller, ssa.Owner{Field: "kustomize-controller", Group: "kustomize.toolkit.fluxcd.io"})
}

func parseManifests(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	objs, err := ssautil.ReadObjects(strings.NewReader(gitopsManifests))
	require.NoError(t, err)
	return objs
}
