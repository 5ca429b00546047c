// Package devflow runs `make dev`'s flow headless: `cairn dev --dr-site
// --examples COPY --headless` with a copy of examples/, through a failover
// to dr-site, and checks the writer's files on the activated PVC.
package devflow

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/gitapply"
	"github.com/cairnstore/cairn/internal/kubeletstub"
	"github.com/cairnstore/cairn/internal/testutil"
)

var (
	dev      *testutil.DevSuite
	examples string // the suite's copy of examples/
)

func TestMain(m *testing.M) {
	os.Exit(testutil.RunDevSuite(m, "devflow suite", testutil.DevSuiteOptions{
		RootFor:    "loop devices, FUSE, mounts",
		Bin:        []string{"versitygw", "csi-attacher", "csi-provisioner"},
		Tools:      []string{"losetup", "mount", "blkid", "mkfs.ext4"},
		TempPrefix: "cdevflow-",
		Args:       []string{"--dr-site", "--headless"},
		Prepare:    copyExamples,
		Setup:      func(s *testutil.DevSuite) error { dev = s; return nil },
		AfterStop: func(s *testutil.DevSuite, failed bool) error {
			if failed {
				out, _ := os.ReadFile(s.Out.Name())
				fmt.Fprintf(os.Stderr, "cairn dev output:\n%s\n", out)
			}
			return nil
		},
	}))
}

// copyExamples copies examples/ into tmp for dev's --examples: the test
// commits to the copy.
func copyExamples(tmp string) ([]string, error) {
	examples = filepath.Join(tmp, "examples")
	if out, err := exec.Command("cp", "-r", filepath.Join(testutil.RepoRoot(), "examples"), examples).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy examples: %v: %s", err, out)
	}
	return []string{"--examples", examples}, nil
}

// poll calls done every second until it reports true or ctx ends.
func poll(ctx context.Context, t *testing.T, what string, done func() bool) {
	t.Helper()
	for !done() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// TestFailover: the standby restores a backup holding the writer's files;
// activating it through the overlay binds the PVC on dr-site, whose files
// and checksums are the primary's.
func TestFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	require.NotNil(t, dev.DRSite, "cairn dev printed no dr-site kubeconfig")
	primary, drSite := dev.Site.Client, dev.DRSite.Client
	srcDir := filepath.Join(publishedPath(ctx, t, primary, "demo-writer"), "writer")
	first := firstWrite(ctx, t, srcDir)

	key := client.ObjectKey{Namespace: "demo", Name: "demo-data"}
	var drv v1.DisasterRecoveryVolume
	poll(ctx, t, "standby restores a backup taken after the writer's first file", func() bool {
		return drSite.Get(ctx, key, &drv) == nil && drv.Status.LastRestoredBackupTime != nil && drv.Status.LastRestoredBackupTime.After(first)
	})
	t.Logf("standby restored %s (taken %s)", drv.Status.LastRestoredBackup, drv.Status.LastRestoredBackupTime)

	activate(ctx, t, drSite)
	var pvc corev1.PersistentVolumeClaim
	poll(ctx, t, "DisasterRecoveryVolume Active and PVC Bound", func() bool {
		return drSite.Get(ctx, key, &drv) == nil && drv.Status.Phase == v1.DRActive &&
			drSite.Get(ctx, key, &pvc) == nil && pvc.Status.Phase == corev1.ClaimBound
	})

	reader := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "demo-reader"}, Spec: corev1.PodSpec{
		NodeName:   "dev-node-1",
		Containers: []corev1.Container{{Name: "reader", Image: "busybox"}},
		Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "demo-data"}}}},
	}}
	require.NoError(t, drSite.Create(ctx, reader))
	dstDir := filepath.Join(publishedPath(ctx, t, drSite, "demo-reader"), "writer")
	checkRestored(t, srcDir, dstDir)
}

// publishedPath waits for the kubelet stand-in to publish the pod's claim.
func publishedPath(ctx context.Context, t *testing.T, c client.Client, pod string) string {
	var path string
	poll(ctx, t, "pod "+pod+" published", func() bool {
		var p corev1.Pod
		if c.Get(ctx, client.ObjectKey{Namespace: "demo", Name: pod}, &p) != nil {
			return false
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == kubeletstub.ConditionVolumesPublished && cond.Status == corev1.ConditionTrue {
				_, path, _ = strings.Cut(cond.Message, "=")
			}
		}
		return path != ""
	})
	return path
}

// firstWrite is when the writer wrote its first listed file.
func firstWrite(ctx context.Context, t *testing.T, dir string) time.Time {
	var entries []manifestEntry
	poll(ctx, t, "writer's first file", func() bool {
		entries = readManifest(t, dir, true)
		return len(entries) > 0
	})
	info, err := os.Stat(filepath.Join(dir, entries[0].name))
	require.NoError(t, err)
	return info.ModTime()
}

// activate sets activate: true in the copy of the dev-dr-site overlay and
// applies it as `cairnctl apply -k` does.
func activate(ctx context.Context, t *testing.T, c client.Client) {
	dir := filepath.Join(examples, "overlays", "dev-dr-site")
	file := filepath.Join(dir, "drvolume.yaml")
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Contains(t, string(data), "activate: false")
	require.NoError(t, os.WriteFile(file, []byte(strings.Replace(string(data), "activate: false", "activate: true", 1)), 0o644))
	entries, err := gitapply.Kustomization(ctx, c, dir)
	require.NoError(t, err)
	require.Contains(t, entries, gitapply.Entry{Object: "DisasterRecoveryVolume/demo/demo-data", Action: "configured"})
}

type manifestEntry struct{ sum, name string }

// readManifest reads dir/MANIFEST.sha256; a missing one is empty when
// allowMissing.
func readManifest(t *testing.T, dir string, allowMissing bool) []manifestEntry {
	f, err := os.Open(filepath.Join(dir, "MANIFEST.sha256"))
	if allowMissing && os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	defer f.Close()
	var out []manifestEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sum, name, ok := strings.Cut(sc.Text(), "  "); ok && len(sum) == 64 {
			out = append(out, manifestEntry{sum, name})
		}
	}
	require.NoError(t, sc.Err())
	return out
}

// checkRestored: every file the restored manifest lists is there with its
// checksum and equals the primary's, and the restored manifest is a prefix
// of the primary's (the writer only appends).
func checkRestored(t *testing.T, srcDir, dstDir string) {
	restored := readManifest(t, dstDir, false)
	require.NotEmpty(t, restored, "restored manifest lists no files")
	primary := readManifest(t, srcDir, false)
	require.GreaterOrEqual(t, len(primary), len(restored))
	require.Equal(t, primary[:len(restored)], restored)
	for _, e := range restored {
		got, err := os.ReadFile(filepath.Join(dstDir, e.name))
		require.NoError(t, err)
		sum := sha256.Sum256(got)
		require.Equal(t, e.sum, hex.EncodeToString(sum[:]), e.name)
		want, err := os.ReadFile(filepath.Join(srcDir, e.name))
		require.NoError(t, err)
		require.Equal(t, want, got, e.name)
	}
	t.Logf("%d files restored on dr-site match the primary's", len(restored))
}
