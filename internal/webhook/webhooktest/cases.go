// Package webhooktest holds the table of invalid manifests that Cairn's
// CRD validation and webhook must reject, with the field and message the
// API server reports: the webhook suite checks them against a real API
// server, and cairnctl's offline validation against the same answers.
package webhooktest

import "strings"

// Bases of valid objects; each case changes one thing.
const (
	Target = `apiVersion: storage.cairn.dev/v1alpha1
kind: BackupTarget
metadata: {name: t}
spec:
  url: s3://backups/cluster-a
  region: us-east-1
  credentialsSecretRef: {namespace: cairn-system, name: s3-creds}
`
	Schedule = `apiVersion: storage.cairn.dev/v1alpha1
kind: RecurringSnapshot
metadata: {name: s}
spec:
  schedule: "0 * * * *"
  timeZone: Europe/Berlin
`
	Policy = `apiVersion: storage.cairn.dev/v1alpha1
kind: VolumePolicy
metadata: {name: p}
spec:
  replicas: 3
`
	DRV = `apiVersion: storage.cairn.dev/v1alpha1
kind: DisasterRecoveryVolume
metadata: {name: d, namespace: default}
spec:
  backupTargetRef: primary
  sourceVolume: pg-data
  claim: {name: pg-data}
`
	Volume = `apiVersion: storage.cairn.dev/v1alpha1
kind: Volume
metadata: {name: v}
spec:
  size: 1Gi
`
)

// With returns base with its spec lines replaced or extended: each "key: value"
// line in edits replaces the spec line with that key (two-space indent) or is
// appended; "-key" deletes it.
func With(base string, edits ...string) string {
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

// InvalidCase is one manifest the API server rejects on create.
type InvalidCase struct {
	Name     string
	Manifest string
	Field    string // exact field path the API server reports
	Message  string // part of the message shown to the user
}

// Invalid is every invalid-manifest case.
var Invalid = []InvalidCase{
	// BackupTarget
	{"unsupported url scheme", With(Target, "url: ftp://backups/x"), "spec.url", "url must start with s3:// or file:///"},
	{"relative file url", With(Target, "url: file://backups", "-region", "-credentialsSecretRef"), "spec.url", "url must start with s3:// or file:///"},
	{"s3 url without bucket", With(Target, "url: s3:///prefix"), "spec.url", "s3 url must be s3://bucket[/prefix]"},
	{"s3 without credentials", With(Target, "-credentialsSecretRef"), "spec.credentialsSecretRef", "an s3:// target needs credentialsSecretRef"},
	{"s3 without region or endpoint", With(Target, "-region"), "spec.region", "an s3:// target needs region or endpoint"},
	{"endpoint not a URL", With(Target, "endpoint: minio:9000"), "spec.endpoint", "endpoint must be an http:// or https:// URL"},
	{"endpoint on a file target", With(Target, "url: file:///var/backups", "endpoint: http://minio:9000"), "spec.endpoint", "endpoint applies only to s3:// targets"},
	{"unknown compression", With(Target, "compression: gzip"), "spec.compression", `Unsupported value: "gzip"`},
	{"poll interval too short", With(Target, "pollInterval: 1s"), "spec.pollInterval", "pollInterval must be between 5s and 24h"},
	{"poll interval not a duration", With(Target, "pollInterval: often"), "spec.pollInterval", "must be of type duration"},
	{"block size too small", With(Target, "blockSize: 4Ki"), "spec.blockSize", "blockSize must be at least 64Ki"},
	{"credentials without name", With(Target, "credentialsSecretRef: {namespace: cairn-system}"), "spec.credentialsSecretRef.name", "Required value"},

	// RecurringSnapshot
	{"invalid cron", With(Schedule, `schedule: "0 25 * * *"`), "spec.schedule", "above maximum (23)"},
	{"six-field cron", With(Schedule, `schedule: "0 0 * * * *"`), "spec.schedule", "has 6 fields, want 5"},
	{"cron that never runs", With(Schedule, `schedule: "0 0 31 2 *"`), "spec.schedule", "never runs"},
	{"unknown time zone", With(Schedule, "timeZone: Mars/Olympus"), "spec.timeZone", `unknown time zone "Mars/Olympus"`},
	{"jitter longer than period", With(Schedule, `schedule: "*/5 * * * *"`, "jitter: 10m"), "spec.jitter", "jitter must be shorter than the schedule's shortest interval (5m0s)"},
	{"retention keeps nothing", With(Schedule, "retention: {keepLast: 0, daily: 0}"), "spec.retention", "retention keeps nothing"},
	{"negative retention", With(Schedule, "retention: {keepLast: -1}"), "spec.retention.keepLast", "should be greater than or equal to 0"},
	{"backup without target", With(Schedule, "action: backup"), "spec.backupTargetRef", "action backup needs backupTargetRef"},
	{"unknown action", With(Schedule, "action: clone"), "spec.action", `Unsupported value: "clone"`},
	{"zero concurrency", With(Schedule, "concurrency: 0"), "spec.concurrency", "should be greater than or equal to 1"},
	{"window bad time", With(Schedule, `windows: [{kind: allow, start: "25:00", end: "06:00"}]`), "spec.windows[0].start", "should match"},
	{"window empty", With(Schedule, `windows: [{kind: deny, start: "06:00", end: "06:00"}]`), "spec.windows[0]", "window start and end must differ"},
	{"window unknown kind", With(Schedule, `windows: [{kind: maybe, start: "01:00", end: "06:00"}]`), "spec.windows[0].kind", `Unsupported value: "maybe"`},
	{"malformed selector operator", With(Schedule, `selector: {matchExpressions: [{key: tier, operator: Near, values: [gold]}]}`), "spec.selector.matchExpressions[0].operator", `not a valid selector operator`},
	{"malformed selector label", With(Schedule, `selector: {matchLabels: {"tier": "gold silver"}}`), "spec.selector.matchLabels", "a valid label must be"},
	{"empty schedule", With(Schedule, `schedule: ""`), "spec.schedule", "should be at least 1 chars long"},

	// VolumePolicy
	{"zero replicas", With(Policy, "replicas: 0"), "spec.replicas", "should be greater than or equal to 1"},
	{"eight replicas", With(Policy, "replicas: 8"), "spec.replicas", "should be less than or equal to 7"},
	{"unknown spread", With(Policy, "placement: {spread: rack}"), "spec.placement.spread", `Unsupported value: "rack"`},
	{"unknown reclaim policy", With(Policy, "storageClass: {name: gold, reclaimPolicy: Recycle}"), "spec.storageClass.reclaimPolicy", `Unsupported value: "Recycle"`},
	{"bad storage class name", With(Policy, "storageClass: {name: Gold_Class}"), "spec.storageClass.name", "should match"},
	{"duplicate schedules", With(Policy, "recurringSnapshots: [hourly, hourly]"), "spec.recurringSnapshots[1]", "Duplicate value"},
	{"priority out of range", With(Policy, "priority: 5000"), "spec.priority", "should be less than or equal to 1000"},
	{"malformed policy selector", With(Policy, `selector: {matchExpressions: [{key: tier, operator: In}]}`), "spec.selector.matchExpressions[0].values", "must be specified when `operator` is 'In' or 'NotIn'"},
	{"bad node selector", With(Policy, `placement: {nodeSelector: {"bad key!": x}}`), "spec.placement.nodeSelector", "name part must consist of alphanumeric characters"},

	// DisasterRecoveryVolume
	{"dr without source", With(DRV, "-sourceVolume"), "spec.sourceVolume", "Required value"},
	{"dr without claim", With(DRV, "-claim"), "spec.claim", "Required value"},
	{"dr poll interval too long", With(DRV, "pollInterval: 48h"), "spec.pollInterval", "pollInterval must be between 5s and 24h"},
	{"dr bad source name", With(DRV, "sourceVolume: PG_DATA"), "spec.sourceVolume", "should match"},

	// Volume
	{"zero size", With(Volume, "size: 0"), "spec.size", "size must be greater than zero"},
	{"negative size", With(Volume, "size: -1Gi"), "spec.size", "size must be greater than zero"},
	{"size not 4k aligned", With(Volume, "size: 1000"), "spec.size", "size must be a whole multiple of 4096 bytes"},
	{"fractional size", With(Volume, `size: "1.5"`), "spec.size", "size must be a whole multiple of 4096 bytes"},
	{"size too large", With(Volume, "size: 65Ti"), "spec.size", "size must be at most 64Ti"},
	{"replica override 9", With(Volume, "replicas: 9"), "spec.replicas", "should be less than or equal to 7"},
}
