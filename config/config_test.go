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
			o.GetKind() != "ClusterRole" && o.GetKind() != "ClusterRoleBinding" && o.GetKind() != "ValidatingWebhookConfiguration" &&
			o.GetKind() != "CSIDriver" {
			require.Equal(t, "cairn-system", o.GetNamespace(), "%s %s", o.GetKind(), o.GetName())
		}
	}
	require.Equal(t, 10, count["CustomResourceDefinition"])
	require.Equal(t, 1, count["Deployment"])
	require.Equal(t, 1, count["DaemonSet"], "the node agent")
	require.Equal(t, 2, count["ServiceAccount"], "manager and node agent")
	require.Equal(t, 1, count["ValidatingWebhookConfiguration"])
	require.Equal(t, 1, count["Certificate"])
	require.Equal(t, 1, count["CSIDriver"])
}

// TestDefaultRunsCSI checks config/csi's pieces in config/default: the
// manager serves the CSI controller socket its sidecars use, each node agent
// serves the node socket node-driver-registrar registers with the kubelet,
// and every sidecar's ClusterRole is bound to the manager's account.
func TestDefaultRunsCSI(t *testing.T) {
	objs, err := localcluster.Build(os.DirFS("."), "default")
	require.NoError(t, err)
	byName := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		byName[o.GetKind()+"/"+o.GetName()] = o
	}
	driver := byName["CSIDriver/csi.cairn.dev"]
	require.NotNil(t, driver)
	attach, _, _ := unstructured.NestedBool(driver.Object, "spec", "attachRequired")
	require.True(t, attach)

	mgr := containers(t, byName["Deployment/cairn-manager"])
	require.Contains(t, mgr["manager"].args, "--csi-endpoint=unix:///csi/csi.sock")
	for _, sc := range []string{"csi-provisioner", "csi-attacher", "csi-snapshotter", "csi-resizer", "liveness-probe"} {
		require.Contains(t, mgr, sc)
		require.Contains(t, mgr[sc].args, "--csi-address=/csi/csi.sock", sc)
		require.Equal(t, "/csi", mgr[sc].mounts["csi-socket"], sc)
	}
	require.Equal(t, "/csi", mgr["manager"].mounts["csi-socket"])

	node := containers(t, byName["DaemonSet/cairn-node"])
	require.Contains(t, node["node"].args, "--csi-endpoint=unix:///csi/csi.sock")
	require.Equal(t, "/var/lib/kubelet", node["node"].mounts["kubelet-dir"])
	require.Contains(t, node["node-driver-registrar"].args, "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.cairn.dev/csi.sock")
	require.Contains(t, node, "liveness-probe")

	for _, sc := range []string{"provisioner", "attacher", "snapshotter", "resizer"} {
		require.NotNil(t, byName["ClusterRole/cairn-csi-"+sc], sc)
		b := byName["ClusterRoleBinding/cairn-csi-"+sc]
		require.NotNil(t, b, sc)
		subjects, _, _ := unstructured.NestedSlice(b.Object, "subjects")
		require.Equal(t, "cairn-manager", subjects[0].(map[string]any)["name"])
	}
}

// TestSnapshotCRDsBuild: config/snapshot-crds lists the six (group)
// snapshot CRDs hack/snapshot-crds.sh copied.
func TestSnapshotCRDsBuild(t *testing.T) {
	objs, err := localcluster.Build(os.DirFS("."), "snapshot-crds")
	require.NoError(t, err)
	var names []string
	for _, o := range objs {
		require.Equal(t, "CustomResourceDefinition", o.GetKind())
		names = append(names, o.GetName())
	}
	require.ElementsMatch(t, []string{
		"volumesnapshots.snapshot.storage.k8s.io", "volumesnapshotcontents.snapshot.storage.k8s.io", "volumesnapshotclasses.snapshot.storage.k8s.io",
		"volumegroupsnapshots.groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io",
		"volumegroupsnapshotclasses.groupsnapshot.storage.k8s.io"}, names)
}

// container is what TestDefaultRunsCSI checks of a container: its args and
// mount paths by volume.
type container struct {
	args   []string
	mounts map[string]string
}

func containers(t *testing.T, o *unstructured.Unstructured) map[string]container {
	t.Helper()
	require.NotNil(t, o)
	list, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	out := map[string]container{}
	for _, c := range list {
		m := c.(map[string]any)
		args, _, _ := unstructured.NestedStringSlice(m, "args")
		mounts, _, _ := unstructured.NestedSlice(m, "volumeMounts")
		cm := container{args: args, mounts: map[string]string{}}
		for _, vm := range mounts {
			cm.mounts[vm.(map[string]any)["name"].(string)] = vm.(map[string]any)["mountPath"].(string)
		}
		out[m["name"].(string)] = cm
	}
	return out
}
