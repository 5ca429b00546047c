package config_test

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"

	"github.com/cairnstore/cairn/config"
	"github.com/cairnstore/cairn/internal/localcluster"
)

// TestHealthChecks runs the shipped Argo CD health script in gopher-lua
// (the Lua runtime Argo CD embeds) and kstatus (what Flux uses) over the
// same objects, so both GitOps tools read Cairn's status the same way.
func TestHealthChecks(t *testing.T) {
	cases := []struct {
		name    string
		object  string
		argo    string
		kstatus kstatus.Status
		message string
	}{
		{"new object, status defaulted", `
metadata: {generation: 1}
status: {observedGeneration: -1}`, "Progressing", kstatus.InProgressStatus, "observe generation 1"},
		// Without the schema's status default kstatus would call a new object
		// Current; the default (tested in internal/webhook) prevents that.
		{"no status at all", `
metadata: {generation: 1}`, "Progressing", kstatus.CurrentStatus, "Waiting for Cairn"},
		{"spec changed, not yet observed", `
metadata: {generation: 3}
status: {observedGeneration: 2, conditions: [{type: Ready, status: "True", reason: Succeeded, message: ok}]}`,
			"Progressing", kstatus.InProgressStatus, "observe generation 3"},
		{"ready", `
metadata: {generation: 2}
status: {observedGeneration: 2, conditions: [{type: Ready, status: "True", reason: Succeeded, message: "3/3 replicas healthy"}]}`,
			"Healthy", kstatus.CurrentStatus, "3/3 replicas healthy"},
		{"reconciling", `
metadata: {generation: 2}
status: {observedGeneration: 2, conditions: [{type: Ready, status: "False", reason: Progressing, message: x}, {type: Reconciling, status: "True", reason: Rebuilding, message: "replica 2 at 40%"}]}`,
			"Progressing", kstatus.InProgressStatus, "Rebuilding: replica 2 at 40%"},
		{"stalled", `
metadata: {generation: 2}
status: {observedGeneration: 2, conditions: [{type: Ready, status: "False", reason: InvalidCredentials, message: x}, {type: Stalled, status: "True", reason: InvalidCredentials, message: "secret s3-creds has no AWS_ACCESS_KEY_ID"}]}`,
			"Degraded", kstatus.FailedStatus, "InvalidCredentials: secret s3-creds has no AWS_ACCESS_KEY_ID"},
		{"not ready, retrying", `
metadata: {generation: 2}
status: {observedGeneration: 2, conditions: [{type: Ready, status: "False", reason: TargetUnreachable, message: "dial tcp: connection refused"}]}`,
			// kstatus reads Ready=False as still in progress (Flux then fails
			// the health check at its timeout); Argo CD has no such timeout,
			// so the script reports Degraded at once rather than Progressing
			// forever.
			"Degraded", kstatus.InProgressStatus, "TargetUnreachable"},
		{"suspended schedule", `
metadata: {generation: 2}
spec: {suspend: true}
status: {observedGeneration: 2, conditions: [{type: Ready, status: "True", reason: Succeeded, message: ok}]}`,
			"Suspended", kstatus.CurrentStatus, "Suspended"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			obj := map[string]any{}
			require.NoError(t, yaml.Unmarshal([]byte(c.object), &obj))
			obj["apiVersion"] = "storage.cairn.dev/v1alpha1"
			obj["kind"] = "BackupTarget"
			obj["metadata"].(map[string]any)["name"] = "x"

			// Through JSON, as the API server delivers it: integers are int64.
			raw, err := json.Marshal(obj)
			require.NoError(t, err)
			u := &unstructured.Unstructured{}
			require.NoError(t, u.UnmarshalJSON(raw))

			status, message := runHealth(t, u.Object)
			require.Equal(t, c.argo, status)
			require.Contains(t, message, c.message)

			res, err := kstatus.Compute(u)
			require.NoError(t, err)
			require.Equal(t, c.kstatus, res.Status, res.Message)
		})
	}
}

// TestArgoCDConfigCoversEveryKind checks that config/argocd registers the
// script for every CRD Cairn installs.
func TestArgoCDConfigCoversEveryKind(t *testing.T) {
	objs, err := localcluster.Build(os.DirFS("."), "argocd")
	require.NoError(t, err)
	require.Len(t, objs, 1)
	data, _, _ := unstructured.NestedStringMap(objs[0].Object, "data")
	script, err := os.ReadFile("argocd/health.lua")
	require.NoError(t, err)
	crds, err := localcluster.CRDs()
	require.NoError(t, err)
	for _, crd := range crds {
		key := "resource.customizations.health." + crd.Spec.Group + "_" + crd.Spec.Names.Kind
		require.Equal(t, string(script), data[key], "argocd-cm lacks %s", key)
	}
}

// runHealth evaluates the shipped health script on obj.
func runHealth(t *testing.T, obj map[string]any) (string, string) {
	t.Helper()
	status, message, err := config.ArgoCDHealth(obj)
	require.NoError(t, err)
	return status, message
}
