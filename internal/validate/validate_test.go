package validate_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/internal/validate"
	"github.com/cairnstore/cairn/internal/webhook/webhooktest"
)

func parse(t *testing.T, manifest string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	require.NoError(t, yaml.Unmarshal([]byte(manifest), &u.Object))
	return u
}

// serverCauses creates obj (dry run) on the real API server and returns its
// causes as "field: message".
func serverCauses(t *testing.T, obj *unstructured.Unstructured) []string {
	t.Helper()
	err := k8s.Create(context.Background(), obj.DeepCopy(), client.DryRunAll)
	require.Error(t, err, "the API server accepted %s", obj.GetName())
	require.True(t, apierrors.IsInvalid(err), "want Invalid, got %v", err)
	var out []string
	for _, c := range err.(apierrors.APIStatus).Status().Details.Causes {
		out = append(out, c.Field+": "+c.Message)
	}
	return out
}

// TestOfflineMatchesAPIServer validates every manifest of the webhook's
// invalid-input table offline and requires exactly the causes the real API
// server (CRD schema, CEL and the webhook) reports for it.
func TestOfflineMatchesAPIServer(t *testing.T) {
	t.Parallel()
	v, err := validate.New()
	require.NoError(t, err)
	for _, c := range webhooktest.Invalid {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			obj := parse(t, c.Manifest)
			want := serverCauses(t, obj)
			var got []string
			for _, e := range v.Validate(context.Background(), obj) {
				got = append(got, e.Field+": "+e.ErrorBody())
			}
			require.ElementsMatch(t, want, got)
			found := false
			for _, g := range got {
				found = found || strings.HasPrefix(g, c.Field+": ") && strings.Contains(g, c.Message)
			}
			require.True(t, found, "want %s: ...%s..., got %v", c.Field, c.Message, got)
		})
	}
}

// TestExamplesAreValid builds every overlay of examples/ and finds nothing
// to report, and the API server accepts every object too.
func TestExamplesAreValid(t *testing.T) {
	t.Parallel()
	v, err := validate.New()
	require.NoError(t, err)
	dirs, err := filepath.Glob(filepath.Join(testutil.RepoRoot(), "examples", "overlays", "*"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(dirs), 5)
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			ms, err := validate.Kustomize(dir)
			require.NoError(t, err)
			require.NotEmpty(t, ms)
			require.Empty(t, v.Manifests(context.Background(), ms))
			for _, m := range ms {
				require.True(t, strings.HasPrefix(m.File, dir), "origin %s of %s", m.File, m.ID())
				_, err := os.Stat(m.File)
				require.NoError(t, err, "origin of %s", m.ID())
			}
		})
	}
}

// TestProblemsNameFileObjectAndField breaks one object of a kustomization
// and one of a plain file and checks each problem points at both.
func TestProblemsNameFileObjectAndField(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, data string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644))
	}
	write("kustomization.yaml", "resources: [policy.yaml, schedule.yaml]\n")
	write("policy.yaml", webhooktest.With(webhooktest.Policy, "replicas: 9"))
	write("schedule.yaml", webhooktest.With(webhooktest.Schedule, "timeZone: Mars/Olympus"))
	v, err := validate.New()
	require.NoError(t, err)
	ms, err := validate.Kustomize(dir)
	require.NoError(t, err)
	got := v.Manifests(context.Background(), ms)
	require.Equal(t, []validate.Problem{
		{File: filepath.Join(dir, "policy.yaml"), Object: "VolumePolicy/p", Field: "spec.replicas", Message: "Invalid value: 9: spec.replicas in body should be less than or equal to 7"},
		{File: filepath.Join(dir, "schedule.yaml"), Object: "RecurringSnapshot/s", Field: "spec.timeZone", Message: `Invalid value: "Mars/Olympus": unknown time zone "Mars/Olympus": use an IANA name such as Europe/Berlin or America/New_York`},
	}, got)
	ms, err = validate.Files([]string{filepath.Join(dir, "policy.yaml")})
	require.NoError(t, err)
	require.Len(t, v.Manifests(context.Background(), ms), 1)
}
