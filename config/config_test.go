package config_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/cairnstore/cairn/internal/localcluster"
)

// TestDefaultBuilds renders config/default the way `make deploy` does and
// checks what a cluster would get: every CRD, the manager, the node agent
// DaemonSet, webhooks pointed
// at the manager's Service, and RBAC without wildcards.
func TestDefaultBuilds(t *testing.T) {
	objs, err := localcluster.Build(os.DirFS("."), "default")
	require.NoError(t, err)
	count := map[string]int{}
	for _, o := range objs {
		count[o.GetKind()]++
		switch o.GetKind() {
		case "ValidatingWebhookConfiguration":
			hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
			require.NotEmpty(t, hooks)
			for _, h := range hooks {
				svc, _, _ := unstructured.NestedStringMap(h.(map[string]any), "clientConfig", "service")
				require.Equal(t, "cairn-webhook", svc["name"], "webhook %v", h)
				require.Equal(t, "cairn-system", svc["namespace"], "webhook %v", h)
				require.True(t, strings.HasPrefix(svc["path"], "/validate-storage-cairn-dev-v1alpha1-"))
			}
		case "ClusterRole", "Role":
			rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
			for _, r := range rules {
				for _, key := range []string{"apiGroups", "resources", "verbs"} {
					vals, _, _ := unstructured.NestedStringSlice(r.(map[string]any), key)
					require.NotContains(t, vals, "*", "%s %s has a wildcard in %s", o.GetKind(), o.GetName(), key)
				}
			}
		}
		if o.GetKind() != "Namespace" && o.GetKind() != "CustomResourceDefinition" &&
			o.GetKind() != "ClusterRole" && o.GetKind() != "ClusterRoleBinding" && o.GetKind() != "ValidatingWebhookConfiguration" {
			require.Equal(t, "cairn-system", o.GetNamespace(), "%s %s", o.GetKind(), o.GetName())
		}
	}
	require.Equal(t, 10, count["CustomResourceDefinition"])
	require.Equal(t, 1, count["Deployment"])
	require.Equal(t, 1, count["DaemonSet"], "the node agent")
	require.Equal(t, 2, count["ServiceAccount"], "manager and node agent")
	require.Equal(t, 1, count["ValidatingWebhookConfiguration"])
	require.Equal(t, 1, count["Certificate"])
}
