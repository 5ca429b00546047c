package config_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"

	"github.com/cairnstore/cairn/config"
	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/testutil"
)

// TestRecordedHealth runs the shipped Argo CD health script over every
// status recorded from real end-to-end runs (config/argocd/testdata, made
// by `make record-health`): each object must read as the kstatus status it
// had when recorded (so the recordings are consistent) and Argo CD's
// health must agree with it, and every kind must have been recorded
// Healthy and in at least one other state (Progressing or Degraded).
func TestRecordedHealth(t *testing.T) {
	files, err := filepath.Glob("argocd/testdata/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files, "no recordings: run `make record-health`")
	states := map[string]map[string]bool{} // kind -> Argo CD health statuses seen
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			var rec testutil.HealthRecording
			require.NoError(t, yaml.Unmarshal(data, &rec))
			// Through JSON, as the API server delivers it: integers are int64.
			raw, err := json.Marshal(rec.Object)
			require.NoError(t, err)
			u := &unstructured.Unstructured{}
			require.NoError(t, u.UnmarshalJSON(raw))

			res, err := kstatus.Compute(u)
			require.NoError(t, err)
			require.Equal(t, rec.KStatus, res.Status.String(), res.Message)
			health, msg, err := config.ArgoCDHealth(u.Object)
			require.NoError(t, err)
			require.Contains(t, config.ArgoCDHealthFor(rec.KStatus), health, "kstatus %s, Argo CD %s: %s", rec.KStatus, health, msg)
			require.NotEmpty(t, msg)
			if states[u.GetKind()] == nil {
				states[u.GetKind()] = map[string]bool{}
			}
			states[u.GetKind()][health] = true
		})
	}
	crds, err := localcluster.CRDs()
	require.NoError(t, err)
	for _, crd := range crds {
		kind := crd.Spec.Names.Kind
		seen := states[kind]
		require.True(t, seen["Healthy"], "%s never recorded Healthy: %v", kind, seen)
		require.Greater(t, len(seen), 1, "%s recorded only %v", kind, seen)
	}
}
