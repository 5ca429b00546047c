package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/engine/backupstore"
	"github.com/cairnstore/cairn/internal/actions"
	"github.com/cairnstore/cairn/internal/gitapply"
	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/internal/webhook/webhooktest"
)

var bg = context.Background()

func examples(parts ...string) string {
	return filepath.Join(append([]string{testutil.RepoRoot(), "examples"}, parts...)...)
}

// requireUserError checks the contract for errors a user causes: exit 1,
// nothing on stdout, one line on stderr that contains want.
func requireUserError(t *testing.T, r result, want string) {
	t.Helper()
	require.Equal(t, 1, r.code, "stdout %q stderr %q", r.stdout, r.stderr)
	require.True(t, strings.HasPrefix(r.stderr, "cairnctl: ") && strings.Count(r.stderr, "\n") == 1, "not one line: %q", r.stderr)
	require.Contains(t, r.stderr, want)
}

// TestBadInput runs every command with input a user gets wrong.
func TestBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// A kubeconfig whose server hangs up on every connection (a port kept
	// by the test, so nothing else can take it).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := l.Addr().String()
	unreachable := filepath.Join(dir, "unreachable")
	require.NoError(t, os.WriteFile(unreachable, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://`+addr+`", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
`), 0o600))
	broken := filepath.Join(dir, "broken")
	require.NoError(t, os.WriteFile(broken, []byte("clusters: [\n"), 0o600))
	badDir := filepath.Join(dir, "bad")
	require.NoError(t, os.MkdirAll(badDir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(badDir, "kustomization.yaml"), []byte("resources: [policy.yaml]\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(badDir, "policy.yaml"), []byte(webhooktest.With(webhooktest.Policy, "replicas: 0")), 0o644))
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing kubeconfig file", []string{"status", "--kubeconfig", filepath.Join(dir, "none")}, "no such file or directory"},
		{"broken kubeconfig", []string{"status", "--kubeconfig", broken}, "kubeconfig: error loading config file"},
		{"unknown context", []string{"status", "--kubeconfig", kubeconfig, "--context", "nope"}, `context "nope" does not exist`},
		{"unreachable cluster", []string{"status", "--kubeconfig", unreachable}, "cannot reach the Kubernetes API server at https://" + addr},
		{"unreachable cluster, apply", []string{"apply", "-k", examples("overlays", "production"), "--kubeconfig", unreachable}, "cannot reach the Kubernetes API server"},
		{"unknown output", []string{"status", "-o", "xml", "--kubeconfig", kubeconfig}, `unknown output format "xml"`},
		{"unknown volume, snapshot", []string{"snapshot", "no-such-volume", "--kubeconfig", kubeconfig}, "volume not found: no-such-volume"},
		{"unknown volume, backup", []string{"backup", "no-such-volume", "--kubeconfig", kubeconfig}, "volume not found: no-such-volume"},
		{"unknown backup, restore", []string{"restore", "no-such-backup", "--to", "x", "--kubeconfig", kubeconfig}, "backup not found: no-such-backup"},
		{"unknown backup, verify", []string{"backup", "verify", "no-such-backup", "--kubeconfig", kubeconfig}, "backup not found: no-such-backup"},
		{"restore without --to", []string{"restore", "b", "--kubeconfig", kubeconfig}, `required flag(s) "to" not set`},
		{"validate missing dir", []string{"validate", "-k", filepath.Join(dir, "none")}, "is not a directory"},
		{"validate nothing", []string{"validate"}, "no manifests: give -k DIR or -f FILE"},
		{"apply invalid", []string{"apply", "-k", badDir, "--kubeconfig", kubeconfig}, "1 problem(s) in 1 object(s): nothing was applied"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ctlRaw(t, c.args...)
			if c.name == "apply invalid" {
				// The problems are the output; the error is the last line.
				require.Contains(t, r.stdout, "spec.replicas")
				r.stdout = ""
			}
			requireUserError(t, r, c.want)
		})
	}
	// Nothing of the invalid kustomization reached the cluster.
	require.Error(t, k8s.Get(bg, client.ObjectKey{Name: "p"}, &v1.VolumePolicy{}))
}

// TestValidate checks every overlay of examples/ and a broken copy of the
// production overlay offline.
func TestValidate(t *testing.T) {
	t.Parallel()
	dirs, err := filepath.Glob(examples("overlays", "*"))
	require.NoError(t, err)
	for _, d := range dirs {
		r := ctlRaw(t, "validate", "-k", d)
		require.Equal(t, 0, r.code, "%s: %s %s", d, r.stdout, r.stderr)
		require.Regexp(t, `^\d+ objects valid\n$`, r.stdout)
	}
	// A copy of the repository with one bad field in the base.
	root := t.TempDir()
	for _, sub := range []string{"base", "overlays/production"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, sub), 0o755))
		files, _ := filepath.Glob(examples(sub, "*.yaml"))
		for _, f := range files {
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			if filepath.Base(f) == "recurringsnapshots.yaml" {
				data = []byte(strings.Replace(string(data), `schedule: "0 * * * *"`, `schedule: "0 25 * * *"`, 1))
			}
			require.NoError(t, os.WriteFile(filepath.Join(root, sub, filepath.Base(f)), data, 0o644))
		}
	}
	r := ctlRaw(t, "validate", "-k", filepath.Join(root, "overlays/production"), "-o", "json")
	requireUserError(t, result{stderr: r.stderr, code: r.code}, "1 problem(s) in 6 object(s)")
	var rep validateReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	require.Len(t, rep.Problems, 1)
	p := rep.Problems[0]
	require.Equal(t, filepath.Join(root, "base", "recurringsnapshots.yaml"), p.File)
	require.Equal(t, "RecurringSnapshot/hourly", p.Object)
	require.Equal(t, "spec.schedule", p.Field)
	require.Contains(t, p.Message, "above maximum (23)")
}

// TestApplyAndStatus applies the dev-primary overlay twice (created, then
// unchanged), and follows its volume to healthy through `status`.
func TestApplyAndStatus(t *testing.T) {
	r := ctl(t, "apply", "-k", examples("overlays", "dev-primary"), "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	var first []gitapply.Entry
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &first))
	require.Len(t, first, 9)
	for _, e := range first {
		require.Equal(t, "created", e.Action, e.Object)
	}
	r = ctl(t, "apply", "-k", examples("overlays", "dev-primary"))
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "VolumePolicy/gold")
	require.Equal(t, 9, strings.Count(r.stdout, "unchanged"), r.stdout)

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		r := ctl(t, "status", "-o", "json")
		assert.Equal(c, 0, r.code, r.stderr)
		var rows []volumeRow
		assert.NoError(c, json.Unmarshal([]byte(r.stdout), &rows))
		for _, row := range rows {
			if row.Name == "demo-data" {
				assert.Equal(c, volumeRow{Name: "demo-data", State: "Detached", Robustness: "healthy", Ready: "True", Replicas: "3/3", Policy: "gold"}, row)
				return
			}
		}
		assert.Fail(c, "no demo-data row", r.stdout)
	}, waitFor, tick)
	r = ctl(t, "status")
	require.Equal(t, 0, r.code)
	require.Regexp(t, `(?m)^demo-data\s+Detached\s+healthy\s+True\s+3/3\s+-\s+gold\s+-\s+-\s+-\s*$`, r.stdout)
}

// TestStatusWatch shows a volume created while `status --watch` runs.
func TestStatusWatch(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(bg)
	out := &lockedBuffer{}
	done := make(chan int)
	go func() { done <- run(ctx, []string{"status", "--watch", "--kubeconfig", kubeconfig}, out, out) }()
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Contains(c, out.String(), "VOLUME") }, waitFor, tick)
	createVolume(t, "watched", "16Mi", 1)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Regexp(c, `(?m)^watched\s`, out.String()) }, waitFor, tick)
	cancel()
	require.Equal(t, 0, <-done, out.String())
}

func createVolume(t *testing.T, name, size string, replicas int32) {
	t.Helper()
	v := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name}}
	v.Spec.Size = resource.MustParse(size)
	v.Spec.Replicas = &replicas
	require.NoError(t, k8s.Create(bg, v))
}

// waitVolume waits until the volume is Ready in state and returns it.
func waitVolume(t *testing.T, name string, state v1.VolumeState) *v1.Volume {
	t.Helper()
	v := &v1.Volume{}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, k8s.Get(bg, client.ObjectKey{Name: name}, v))
		assert.Equal(c, state, v.Status.State)
		assert.True(c, meta.IsStatusConditionTrue(v.Status.Conditions, v1.ConditionReady))
	}, waitFor, tick)
	return v
}

func patchNode(t *testing.T, name, node string) {
	t.Helper()
	testutil.Volumes{Client: k8s}.Patch(t, name, func(v *v1.Volume) { v.Spec.NodeID = node })
}

// TestSnapshotBackupRestoreVerify writes data to a volume, then snapshots
// it, backs it up, lists, restores and verifies the backup through
// cairnctl, and finally verifies a backup with a corrupted block.
func TestSnapshotBackupRestoreVerify(t *testing.T) {
	t.Parallel()
	target := filepath.Join(suiteTmp, "file-target")
	manifest := filepath.Join(t.TempDir(), "objects.yaml")
	require.NoError(t, os.WriteFile(manifest, []byte(fmt.Sprintf(`apiVersion: storage.cairn.dev/v1alpha1
kind: BackupTarget
metadata: {name: ctl-files}
spec: {url: "file://%s"}
---
apiVersion: storage.cairn.dev/v1alpha1
kind: Volume
metadata: {name: ctl-src}
spec: {size: 16Mi, replicas: 2}
`, target)), 0o644))
	r := ctl(t, "apply", "-f", manifest)
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `(?m)^BackupTarget/ctl-files\s+created$`, r.stdout)

	// Recognisable data: 4 MiB of random bytes at the start of the volume.
	waitVolume(t, "ctl-src", v1.VolumeDetached)
	patchNode(t, "ctl-src", "dev-node-1")
	dev := waitVolume(t, "ctl-src", v1.VolumeAttached).Status.Endpoint
	data := make([]byte, 4<<20)
	_, _ = rand.Read(data)
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(data, 0)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	patchNode(t, "ctl-src", "")
	waitVolume(t, "ctl-src", v1.VolumeDetached)

	r = ctl(t, "snapshot", "ctl-src", "--wait")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `^snapshot ctl-src-snap-\w+ of volume ctl-src created\n$`, r.stdout)
	snap := &v1.Snapshot{}
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Name: strings.Fields(r.stdout)[1]}, snap))
	require.True(t, snap.Status.ReadyToUse)
	require.Equal(t, "ctl-src", snap.Labels[v1.LabelVolume])
	require.Len(t, snap.OwnerReferences, 1, "a snapshot goes with its volume")
	require.Equal(t, "ctl-src", snap.OwnerReferences[0].Name)

	r = ctl(t, "backup", "ctl-src", "--target", "ctl-files", "--wait", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stderr, "100% backup ")
	var b v1.Backup
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &b))
	require.Equal(t, "Completed", b.Status.State)
	require.Equal(t, "Retain", b.Spec.DeletePolicy)

	require.Empty(t, b.OwnerReferences, "a backup outlives its volume")

	// status: the volume's last backup and an RPO.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		r := ctl(t, "status", "-o", "json")
		var rows []volumeRow
		assert.NoError(c, json.Unmarshal([]byte(r.stdout), &rows))
		for _, row := range rows {
			if row.Name == "ctl-src" {
				assert.Equal(c, b.Name, row.LastBackup)
				assert.Regexp(c, `^\d+[smhd]$`, row.RPO)
				return
			}
		}
		assert.Fail(c, "no ctl-src row")
	}, waitFor, tick)

	r = ctl(t, "backup", "list", "--volume", "ctl-src")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `(?m)^`+b.Name+`\s+ctl-src\s+ctl-files\s+Completed\s+100%\s+16Mi\s`, r.stdout)

	r = ctl(t, "restore", b.Name, "--to", "ctl-restored", "--replicas", "1")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "volume ctl-restored from backup "+b.Name+" created\n", r.stdout)
	require.Contains(t, r.stderr, "100% restored")
	patchNode(t, "ctl-restored", "dev-node-2")
	got, err := os.ReadFile(waitVolume(t, "ctl-restored", v1.VolumeAttached).Status.Endpoint)
	require.NoError(t, err)
	require.Equal(t, data, got[:len(data)], "restored data differs")
	patchNode(t, "ctl-restored", "")

	r = ctl(t, "backup", "verify", b.Name)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "backup "+b.Name+" verified: every block restored and matched its checksum\n", r.stdout)
	requireNoVerifyVolumes(t)

	// Corrupt one stored block inside its pack: verification fails and
	// names it.
	victim := corruptFirstBlock(t, "file://"+target, b.Spec.VolumeName, b.Status.BackupID)
	r = ctl(t, "backup", "verify", b.Name)
	require.Contains(t, r.stderr, "restoring backup "+b.Name+" into throw-away volume verify-")
	r.stderr = r.stderr[strings.LastIndex(strings.TrimSuffix(r.stderr, "\n"), "\n")+1:] // after the progress lines
	requireUserError(t, r, "backup "+b.Name+" failed verification: ")
	require.Contains(t, r.stderr, "corrupt object: block "+victim.String())
	requireNoVerifyVolumes(t)
}

// corruptFirstBlock flips a byte in the middle of the stored record of a
// backup's first non-zero block, in its pack, and returns the block.
func corruptFirstBlock(t *testing.T, url, volume, backup string) backupstore.BlockID {
	t.Helper()
	s, err := backupstore.Open(bg, url, backupstore.Options{ReadOnly: true})
	require.NoError(t, err)
	m, err := s.ReadManifest(bg, volume, backup)
	require.NoError(t, err)
	for _, id := range m.Blocks {
		if id.IsZero() {
			continue
		}
		key, off, n, err := s.BlockLocation(bg, id)
		require.NoError(t, err)
		f, err := os.OpenFile(filepath.Join(strings.TrimPrefix(url, "file://"), filepath.FromSlash(key)), os.O_RDWR, 0)
		require.NoError(t, err)
		defer f.Close()
		b := []byte{0}
		_, err = f.ReadAt(b, off+n/2)
		require.NoError(t, err)
		b[0] ^= 0xff
		_, err = f.WriteAt(b, off+n/2)
		require.NoError(t, err)
		return id
	}
	t.Fatalf("backup %s/%s has no stored block", volume, backup)
	return backupstore.BlockID{}
}

func requireNoVerifyVolumes(t *testing.T) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var list v1.VolumeList
		assert.NoError(c, k8s.List(bg, &list, client.HasLabels{actions.LabelVerifies}))
		assert.Empty(c, list.Items)
	}, waitFor, tick)
}

// TestBackupWithoutTarget: a volume without a policy needs --target.
func TestBackupWithoutTarget(t *testing.T) {
	t.Parallel()
	createVolume(t, "no-policy", "16Mi", 1)
	requireUserError(t, ctl(t, "backup", "no-policy"), "no backup target: volume no-policy has no policy")
}

// TestDRStatus lists a DisasterRecoveryVolume applied through cairnctl.
func TestDRStatus(t *testing.T) {
	t.Parallel()
	require.NoError(t, client.IgnoreAlreadyExists(k8s.Create(bg, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "drtest"}})))
	manifest := filepath.Join(t.TempDir(), "dr.yaml")
	require.NoError(t, os.WriteFile(manifest, []byte(`apiVersion: storage.cairn.dev/v1alpha1
kind: DisasterRecoveryVolume
metadata: {name: standby, namespace: drtest}
spec: {backupTargetRef: elsewhere, sourceVolume: pg-data, claim: {name: pg}}
`), 0o644))
	r := ctl(t, "apply", "-f", manifest)
	require.Equal(t, 0, r.code, r.stderr)
	r = ctl(t, "dr", "status", "-o", "yaml")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "name: standby\n")
	require.Contains(t, r.stdout, "sourceVolume: pg-data\n")
	r = ctl(t, "dr", "status")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `(?m)^drtest\s+standby\s+\S+\s+\S+\s+pg-data\s+elsewhere\s+false\s`, r.stdout)
}
