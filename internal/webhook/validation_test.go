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
)

// Bases of valid objects; each case changes one thing.
const (
	target = `apiVersion: storage.cairn.dev/v1alpha1
kind: BackupTarget
metadata: {name: t}
spec:
  url: s3://backups/cluster-a
  region: us-east-1
  credentialsSecretRef: {namespace: cairn-system, name: s3-creds}
`
	schedule = `apiVersion: storage.cairn.dev/v1alpha1
kind: RecurringSnapshot
metadata: {name: s}
spec:
  schedule: "0 * * * *"
  timeZone: Europe/Berlin
`
	policy = `apiVersion: storage.cairn.dev/v1alpha1
kind: VolumePolicy
metadata: {name: p}
spec:
  replicas: 3
`
	drv = `apiVersion: storage.cairn.dev/v1alpha1
kind: DisasterRecoveryVolume
metadata: {name: d, namespace: default}
spec:
  backupTargetRef: primary
  sourceVolume: pg-data
  claim: {name: pg-data}
`
	volume = `apiVersion: storage.cairn.dev/v1alpha1
kind: Volume
metadata: {name: v}
spec:
  size: 1Gi
`
)

// with returns base with its spec lines replaced or extended: each "key: value"
// line in edits replaces the spec line with that key (two-space indent) or is
// appended; "-key" deletes it.
func with(base string, edits ...string) string {
	lines := strings.Split(strings.TrimRight(base, "\n"), "\n")
	for _, e := range edits {
		del := strings.HasPrefix(e, "-")
		key := strings.SplitN(strings.TrimPrefix(e, "-"), ":", 2)[0]
		found := false
		for i, l := range lines {
			if strings.HasPrefix(l, "  "+key+":") {
				found = true
				if del {
					lines = append(lines[:i], lines[i+1:]...)
				} else {
					lines[i] = "  " + e
				}
				break
			}
		}
		if !found && !del {
			lines = append(lines, "  "+e)
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

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
	cases := []struct {
		name     string
		manifest string
		field    string // exact field path the API server reports
		message  string // part of the message shown to the user
	}{
		// BackupTarget
		{"unsupported url scheme", with(target, "url: ftp://backups/x"), "spec.url", "url must start with s3:// or file:///"},
		{"relative file url", with(target, "url: file://backups", "-region", "-credentialsSecretRef"), "spec.url", "url must start with s3:// or file:///"},
		{"s3 url without bucket", with(target, "url: s3:///prefix"), "spec.url", "s3 url must be s3://bucket[/prefix]"},
		{"s3 without credentials", with(target, "-credentialsSecretRef"), "spec.credentialsSecretRef", "an s3:// target needs credentialsSecretRef"},
		{"s3 without region or endpoint", with(target, "-region"), "spec.region", "an s3:// target needs region or endpoint"},
		{"endpoint not a URL", with(target, "endpoint: minio:9000"), "spec.endpoint", "endpoint must be an http:// or https:// URL"},
		{"endpoint on a file target", with(target, "url: file:///var/backups", "endpoint: http://minio:9000"), "spec.endpoint", "endpoint applies only to s3:// targets"},
		{"unknown compression", with(target, "compression: gzip"), "spec.compression", `Unsupported value: "gzip"`},
		{"poll interval too short", with(target, "pollInterval: 1s"), "spec.pollInterval", "pollInterval must be between 5s and 24h"},
		{"poll interval not a duration", with(target, "pollInterval: often"), "spec.pollInterval", "must be of type duration"},
		{"block size too small", with(target, "blockSize: 4Ki"), "spec.blockSize", "blockSize must be at least 64Ki"},
		{"credentials without name", with(target, "credentialsSecretRef: {namespace: cairn-system}"), "spec.credentialsSecretRef.name", "Required value"},

		// RecurringSnapshot
		{"invalid cron", with(schedule, `schedule: "0 25 * * *"`), "spec.schedule", "above maximum (23)"},
		{"six-field cron", with(schedule, `schedule: "0 0 * * * *"`), "spec.schedule", "has 6 fields, want 5"},
		{"cron that never runs", with(schedule, `schedule: "0 0 31 2 *"`), "spec.schedule", "never runs"},
		{"unknown time zone", with(schedule, "timeZone: Mars/Olympus"), "spec.timeZone", `unknown time zone "Mars/Olympus"`},
		{"jitter longer than period", with(schedule, `schedule: "*/5 * * * *"`, "jitter: 10m"), "spec.jitter", "jitter must be shorter than the schedule's shortest interval (5m0s)"},
		{"retention keeps nothing", with(schedule, "retention: {keepLast: 0, daily: 0}"), "spec.retention", "retention keeps nothing"},
		{"negative retention", with(schedule, "retention: {keepLast: -1}"), "spec.retention.keepLast", "should be greater than or equal to 0"},
		{"backup without target", with(schedule, "action: backup"), "spec.backupTargetRef", "action backup needs backupTargetRef"},
		{"unknown action", with(schedule, "action: clone"), "spec.action", `Unsupported value: "clone"`},
		{"zero concurrency", with(schedule, "concurrency: 0"), "spec.concurrency", "should be greater than or equal to 1"},
		{"window bad time", with(schedule, `windows: [{kind: allow, start: "25:00", end: "06:00"}]`), "spec.windows[0].start", "should match"},
		{"window empty", with(schedule, `windows: [{kind: deny, start: "06:00", end: "06:00"}]`), "spec.windows[0]", "window start and end must differ"},
		{"window unknown kind", with(schedule, `windows: [{kind: maybe, start: "01:00", end: "06:00"}]`), "spec.windows[0].kind", `Unsupported value: "maybe"`},
		{"malformed selector operator", with(schedule, `selector: {matchExpressions: [{key: tier, operator: Near, values: [gold]}]}`), "spec.selector.matchExpressions[0].operator", `not a valid selector operator`},
		{"malformed selector label", with(schedule, `selector: {matchLabels: {"tier": "gold silver"}}`), "spec.selector.matchLabels", "a valid label must be"},
		{"empty schedule", with(schedule, `schedule: ""`), "spec.schedule", "should be at least 1 chars long"},

		// VolumePolicy
		{"zero replicas", with(policy, "replicas: 0"), "spec.replicas", "should be greater than or equal to 1"},
		{"eight replicas", with(policy, "replicas: 8"), "spec.replicas", "should be less than or equal to 7"},
		{"unknown spread", with(policy, "placement: {spread: rack}"), "spec.placement.spread", `Unsupported value: "rack"`},
		{"unknown reclaim policy", with(policy, "storageClass: {name: gold, reclaimPolicy: Recycle}"), "spec.storageClass.reclaimPolicy", `Unsupported value: "Recycle"`},
		{"bad storage class name", with(policy, "storageClass: {name: Gold_Class}"), "spec.storageClass.name", "should match"},
		{"duplicate schedules", with(policy, "recurringSnapshots: [hourly, hourly]"), "spec.recurringSnapshots[1]", "Duplicate value"},
		{"priority out of range", with(policy, "priority: 5000"), "spec.priority", "should be less than or equal to 1000"},
		{"malformed policy selector", with(policy, `selector: {matchExpressions: [{key: tier, operator: In}]}`), "spec.selector.matchExpressions[0].values", "must be specified when `operator` is 'In' or 'NotIn'"},
		{"bad node selector", with(policy, `placement: {nodeSelector: {"bad key!": x}}`), "spec.placement.nodeSelector", "name part must consist of alphanumeric characters"},

		// DisasterRecoveryVolume
		{"dr without source", with(drv, "-sourceVolume"), "spec.sourceVolume", "Required value"},
		{"dr without claim", with(drv, "-claim"), "spec.claim", "Required value"},
		{"dr poll interval too long", with(drv, "pollInterval: 48h"), "spec.pollInterval", "pollInterval must be between 5s and 24h"},
		{"dr bad source name", with(drv, "sourceVolume: PG_DATA"), "spec.sourceVolume", "should match"},

		// Volume
		{"zero size", with(volume, "size: 0"), "spec.size", "size must be greater than zero"},
		{"negative size", with(volume, "size: -1Gi"), "spec.size", "size must be greater than zero"},
		{"size not 4k aligned", with(volume, "size: 1000"), "spec.size", "size must be a whole multiple of 4096 bytes"},
		{"fractional size", with(volume, `size: "1.5"`), "spec.size", "size must be a whole multiple of 4096 bytes"},
		{"size too large", with(volume, "size: 65Ti"), "spec.size", "size must be at most 64Ti"},
		{"replica override 9", with(volume, "replicas: 9"), "spec.replicas", "should be less than or equal to 7"},
	}
	require.GreaterOrEqual(t, len(cases), 30)
	ctx := context.Background()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := k8s.Create(ctx, parse(t, c.manifest), client.DryRunAll)
			require.Error(t, err, "the API server accepted:\n%s", c.manifest)
			require.True(t, apierrors.IsInvalid(err), "want Invalid, got %v", err)
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
