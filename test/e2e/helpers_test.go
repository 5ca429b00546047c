package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/config"
	"github.com/cairnstore/cairn/internal/testutil"
)

var bg = context.Background()

const wait, tick = 3 * time.Minute, 250 * time.Millisecond

func createPolicy(t *testing.T, name, app string, replicas int32) *v1.VolumePolicy {
	t.Helper()
	p := &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.Replicas = replicas
	p.Spec.ReplenishWait = &metav1.Duration{Duration: 5 * time.Second}
	p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
	require.NoError(t, k8s.Create(bg, p))
	return p
}

func current(t assert.TestingT, obj client.Object) bool {
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if !assert.NoError(t, err) {
		return false
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: u})
	if !assert.NoError(t, err) {
		return false
	}
	return assert.NoError(t, healthAgrees(u, res.Status)) && res.Status == status.CurrentStatus
}

// healthAgrees checks Argo CD's reading of a live object (the shipped Lua
// health script) against kstatus (what Flux reads), as
// config.ArgoCDHealthFor defines agreement.
func healthAgrees(obj map[string]any, ks status.Status) error {
	argo, msg, err := config.ArgoCDHealth(obj)
	if err != nil {
		return err
	}
	if ok := config.ArgoCDHealthFor(ks.String()); ok != nil && !slices.Contains(ok, argo) {
		return fmt.Errorf("kstatus says %s but Argo CD's health script says %s (%s)", ks, argo, msg)
	}
	return nil
}

func patchPolicy(t *testing.T, name string, mutate func(*v1.VolumePolicy)) {
	t.Helper()
	testutil.Patch(t, k8s, &v1.VolumePolicy{ObjectMeta: metaName(name)}, mutate)
}

// fioJob is one region of a volume written and verified with crc32c.
type fioJob struct{ offset, size string }

func (j fioJob) args(dev string) []string {
	return []string{"--name=e2e-" + j.offset, "--filename=" + dev, "--ioengine=psync", "--direct=1",
		"--rw=randwrite", "--bs=4k", "--offset=" + j.offset, "--size=" + j.size,
		"--randrepeat=1", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1"}
}

// write writes the region and verifies it.
func (j fioJob) write(t *testing.T, dev string) {
	t.Helper()
	runFio(t, j.args(dev))
}

// verify re-reads the region and checks what write left.
func (j fioJob) verify(t *testing.T, dev string) {
	t.Helper()
	runFio(t, append(j.args(dev), "--verify_only"))
}

func runFio(t *testing.T, args []string) {
	t.Helper()
	out, err := exec.Command("fio", args...).CombinedOutput()
	require.NoError(t, err, "fio %s:\n%s", strings.Join(args, " "), out)
	require.NotContains(t, string(out), "verify: bad", "fio found corrupt data")
}

// childrenOf lists the live direct children of pid.
func childrenOf(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[0] != "Z" && f[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(e.Name())
			out = append(out, child)
		}
	}
	return out
}

func replicaObjects(t assert.TestingT, volume string) []v1.Replica {
	var list v1.ReplicaList
	assert.NoError(t, k8s.List(bg, &list, client.MatchingLabels{v1.LabelVolume: volume}))
	return list.Items
}

func metaName(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name} }

func itoa(i int) string { return strconv.Itoa(i) }

// allProcs lists every live process.
func allProcs() []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// deviceSize is a block device's size in bytes, as blockdev reports it.
func deviceSize(t assert.TestingT, dev string) string {
	out, err := exec.Command("blockdev", "--getsize64", dev).Output()
	assert.NoError(t, err)
	return strings.TrimSpace(string(out))
}
