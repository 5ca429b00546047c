package webhook_test

import (
	"context"
	"io/fs"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/cairnstore/cairn/config"
	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/webhook/webhooktest"
)

// The table's bases and editor, by the short names the update cases use.
const (
	target   = webhooktest.Target
	schedule = webhooktest.Schedule
	policy   = webhooktest.Policy
	drv      = webhooktest.DRV
	volume   = webhooktest.Volume
)

var with = webhooktest.With

func parse(t *testing.T, manifest string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	require.NoError(t, yaml.Unmarshal([]byte(manifest), &u.Object))
	return u
}

// causes flattens the field/message pairs of an Invalid error.
func causes(err error) []string {
	var out []string
	if st, ok := err.(apierrors.APIStatus); ok && st.Status().Details != nil {
		for _, c := range st.Status().Details.Causes {
			out = append(out, c.Field+": "+c.Message)
		}
	}
	return out
}

func TestInvalidManifestsAreRejected(t *testing.T) {
	cases := webhooktest.Invalid
	require.GreaterOrEqual(t, len(cases), 30)
	ctx := context.Background()
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			err := k8s.Create(ctx, parse(t, c.Manifest), client.DryRunAll)
			require.Error(t, err, "the API server accepted:\n%s", c.Manifest)
			require.True(t, apierrors.IsInvalid(err), "want Invalid, got %v", err)
			found := false
			for _, cause := range causes(err) {
				if strings.HasPrefix(cause, c.Field+": ") && strings.Contains(cause, c.Message) {
					found = true
				}
			}
			require.True(t, found, "want %s: ...%s...\ngot %v", c.Field, c.Message, causes(err))
		})
	}
}

func TestInvalidUpdatesAreRejected(t *testing.T) {
	cases := []struct {
		name          string
		create, apply string
		field         string
		message       string
	}{
		{"activate moves back", with(drv, "activate: true"), with(drv, "activate: false"), "spec.activate", "activate cannot move back from true to false"},
		{"volume shrinks", with(volume, "size: 2Gi"), with(volume, "size: 1Gi"), "spec.size", "size cannot shrink"},
		{"fromBackup added later", volume, with(volume, "fromBackup: {backupTargetRef: primary, volume: pg-data}"), "spec", "fromBackup is set only when the volume is created"},
		{"jitter raised past period", with(schedule, `schedule: "*/10 * * * *"`), with(schedule, `schedule: "*/10 * * * *"`, "jitter: 15m"), "spec.jitter", "shortest interval (10m0s)"},
	}
	ctx := context.Background()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			obj := parse(t, c.create)
			obj.SetName(obj.GetName() + "-upd-" + string(rune('a'+i)))
			require.NoError(t, k8s.Create(ctx, obj))
			t.Cleanup(func() { _ = k8s.Delete(ctx, obj) })

			upd := parse(t, c.apply)
			upd.SetName(obj.GetName())
			upd.SetResourceVersion(obj.GetResourceVersion())
			err := k8s.Update(ctx, upd)
			require.Error(t, err)
			found := false
			for _, cause := range causes(err) {
				if strings.HasPrefix(cause, c.field+": ") && strings.Contains(cause, c.message) {
					found = true
				}
			}
			require.True(t, found, "want %s: ...%s...\ngot %v", c.field, c.message, causes(err))
		})
	}
}

// TestSamplesAreAccepted applies config/samples (through kustomize, as
// `cairn dev` does) and the internal-kind samples, and checks kstatus'
// starting point: observedGeneration defaults to -1.
func TestSamplesAreAccepted(t *testing.T) {
	ctx := context.Background()
	objs, err := localcluster.Build(config.Samples, "samples")
	require.NoError(t, err)
	internal, err := fs.ReadFile(config.Samples, "samples/internal/storage_v1alpha1_internal.yaml")
	require.NoError(t, err)
	for _, doc := range strings.Split(string(internal), "\n---\n") {
		objs = append(objs, parse(t, doc))
	}
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.GetKind()] = true
	}
	require.Len(t, kinds, 10, "one sample per kind: %v", kinds)
	require.NoError(t, localcluster.Apply(ctx, k8s, "samples-test", objs))
	for _, o := range objs {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(o.GroupVersionKind())
		require.NoError(t, k8s.Get(ctx, client.ObjectKeyFromObject(o), got))
		gen, found, err := unstructured.NestedInt64(got.Object, "status", "observedGeneration")
		require.NoError(t, err)
		require.True(t, found, "%s %s has no status.observedGeneration", o.GetKind(), o.GetName())
		require.Equal(t, int64(-1), gen)
		// kstatus (what Flux and cli-utils use) must read a new,
		// not-yet-reconciled object as in progress, not as current.
		res, err := kstatus.Compute(got)
		require.NoError(t, err)
		require.Equal(t, kstatus.InProgressStatus, res.Status, "%s %s: %s", o.GetKind(), o.GetName(), res.Message)
	}
	// Re-applying the same manifests changes nothing a user or GitOps tool
	// sees: same generation, spec and metadata. The API server persists the
	// schema's status default ({observedGeneration: -1}) on the first update,
	// so the resourceVersion moves once; from then on an apply is a no-op.
	snapshot := func() map[string]*unstructured.Unstructured {
		m := map[string]*unstructured.Unstructured{}
		for _, o := range objs {
			got := &unstructured.Unstructured{}
			got.SetGroupVersionKind(o.GroupVersionKind())
			require.NoError(t, k8s.Get(ctx, client.ObjectKeyFromObject(o), got))
			m[o.GetKind()+"/"+o.GetName()] = got
		}
		return m
	}
	first := snapshot()
	require.NoError(t, localcluster.Apply(ctx, k8s, "samples-test", objs))
	second := snapshot()
	require.NoError(t, localcluster.Apply(ctx, k8s, "samples-test", objs))
	third := snapshot()
	for key, a := range first {
		b, c := second[key], third[key]
		require.Equal(t, a.GetGeneration(), b.GetGeneration(), "re-apply bumped the generation of %s", key)
		require.Equal(t, a.Object["spec"], b.Object["spec"], "re-apply changed the spec of %s", key)
		require.Equal(t, a.GetLabels(), b.GetLabels(), key)
		require.Equal(t, a.GetAnnotations(), b.GetAnnotations(), key)
		require.Equal(t, b.GetResourceVersion(), c.GetResourceVersion(), "a third apply still wrote %s", key)
	}
}
