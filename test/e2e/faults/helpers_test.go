package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/testutil"
)

var bg = context.Background()

const wait, tick = 3 * time.Minute, 100 * time.Millisecond

// newVolume creates a policy of n replicas (replenish after replenish)
// selecting one volume of size, and deletes both when the test ends,
// checking that the volume leaves nothing behind.
func newVolume(t *testing.T, name, size string, n int32, replenish time.Duration) {
	t.Helper()
	p := &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.Replicas = n
	p.Spec.ReplenishWait = &metav1.Duration{Duration: replenish}
	p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}}
	require.NoError(t, k8s.Create(bg, p))
	vols.Create(t, name, name, size)
	t.Cleanup(func() { deleteVolume(t, name) })
}

// deleteVolume deletes the volume and its policy and waits until no
// process, replica directory, loop device or mount of it is left.
func deleteVolume(t *testing.T, name string) {
	require.NoError(t, client.IgnoreNotFound(k8s.Delete(bg, &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name}})))
	require.NoError(t, client.IgnoreNotFound(k8s.Delete(bg, &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: name}})))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, client.ObjectKey{Name: name}, &v1.Volume{})), "volume not deleted")
		assert.Empty(c, dev.Procs("--volume "+name), "processes left")
		dirs, _ := filepath.Glob(filepath.Join(dev.DataDir, "nodes", "*", "replicas", name+"-r-*"))
		assert.Empty(c, dirs, "replica directories left")
		assert.Empty(c, loopDevices(name), "loop devices left")
		assert.Empty(c, mounts(name), "mounts left")
	}, wait, tick)
}

// replicaOn returns the name of the volume's replica on a node other than
// not, and that node.
func replicaOn(t *testing.T, v *v1.Volume, not string) (string, string) {
	t.Helper()
	for _, r := range v.Status.Replicas {
		if r.Node != not {
			return r.Name, r.Node
		}
	}
	t.Fatalf("no replica of %s off %s", v.Name, not)
	return "", ""
}

// waitFor polls cond until it holds and returns how long that took.
func waitFor(t *testing.T, what string, cond func(c *assert.CollectT)) time.Duration {
	t.Helper()
	start := time.Now()
	require.EventuallyWithT(t, cond, wait, tick, what)
	return time.Since(start)
}

// waitReplica waits until the volume's robustness is want and it reports
// replica victim on node in mode ("ERR" dropped, "RW" back in use).
func waitReplica(t *testing.T, what, vol, victim, node string, want v1.Robustness, mode string) time.Duration {
	t.Helper()
	return waitFor(t, what, func(c *assert.CollectT) {
		v := vols.Get(c, vol)
		assert.Equal(c, want, v.Status.Robustness)
		assert.Contains(c, v.Status.Replicas, v1.VolumeReplicaStatus{Name: victim, Node: node, Mode: mode})
	})
}

// region is one range of the device fio writes and verifies with crc32c.
type region struct{ offset, size int64 }

func (r region) args(dev string) []string {
	return []string{"--name=faults-" + strconv.FormatInt(r.offset, 10), "--filename=" + dev, "--ioengine=psync", "--direct=1",
		"--rw=randwrite", "--bs=4k", "--offset=" + strconv.FormatInt(r.offset, 10), "--size=" + strconv.FormatInt(r.size, 10),
		"--randrepeat=1", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1"}
}

// fio runs fio in dir (a test's temp dir): fio saves its verify state
// (NAME-N-verify.state) in its working directory.
func fio(dir string, args []string) error {
	cmd := exec.Command("fio", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "verify: bad") {
		return fmt.Errorf("fio %s: %v:\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// writer keeps fio writing and verifying regions of a device, one after
// another round robin, until stopped.
type writer struct {
	dev     string
	dir     string // fio's working directory
	regions []region
	stop    chan struct{}
	done    chan error
	mu      sync.Mutex
	passes  int
	written map[region]bool
}

// startWriter starts fio on dev over regions of size each, from offset 0.
func startWriter(t *testing.T, dev string, regions int, size int64) *writer {
	t.Helper()
	w := &writer{dev: dev, dir: t.TempDir(), stop: make(chan struct{}), done: make(chan error, 1), written: map[region]bool{}}
	for i := 0; i < regions; i++ {
		w.regions = append(w.regions, region{offset: int64(i) * size, size: size})
	}
	go w.run()
	return w
}

func (w *writer) run() {
	for i := 0; ; i++ {
		select {
		case <-w.stop:
			w.done <- nil
			return
		default:
		}
		r := w.regions[i%len(w.regions)]
		if err := fio(w.dir, r.args(w.dev)); err != nil {
			w.done <- err
			return
		}
		w.mu.Lock()
		w.passes++
		w.written[r] = true
		w.mu.Unlock()
	}
}

// Passes is how many regions fio wrote and verified so far.
func (w *writer) Passes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.passes
}

// waitPasses waits until fio completed n more passes, or failed.
func (w *writer) waitPasses(t *testing.T, n int) {
	t.Helper()
	target := w.Passes() + n
	require.Eventually(t, func() bool {
		select {
		case err := <-w.done:
			w.done <- err
			return true
		default:
			return w.Passes() >= target
		}
	}, wait, tick, "fio made no progress")
}

// finish stops the writer after its current pass, requires every pass to
// have verified, then re-reads every region written and verifies it.
func (w *writer) finish(t *testing.T) {
	t.Helper()
	close(w.stop)
	require.NoError(t, <-w.done, "fio found corrupt data or failed")
	w.mu.Lock()
	defer w.mu.Unlock()
	require.NotEmpty(t, w.written)
	for r := range w.written {
		require.NoError(t, fio(w.dir, append(r.args(w.dev), "--verify_only")))
	}
	t.Logf("fio wrote and verified %d passes", w.passes)
}

// loopDevices lists loop devices whose backing file lies in the suite's
// data directory and names vol.
func loopDevices(vol string) []string {
	out, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	var devs []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, dev.DataDir) && strings.Contains(line, vol) {
			devs = append(devs, line)
		}
	}
	return devs
}

// mounts lists mounts under the suite's data directory that name vol.
func mounts(vol string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := sc.Text(); strings.Contains(line, dev.DataDir) && strings.Contains(line, vol) {
			out = append(out, line)
		}
	}
	return out
}

// resynced adds up what the volume's engines logged they copied to
// replicas ("Rebuild finished": bytes) and rewrote on returning ones
// ("Resync finished": bytesRepaired), over every engine process the volume
// had on any node (an engine restarts when its replica set changes).
func resynced(t *testing.T, vol string) (int64, bool) {
	t.Helper()
	var total int64
	found := false
	engineLog(t, vol, func(line map[string]any) {
		key := map[any]string{"Rebuild finished": "bytes", "Resync finished": "bytesRepaired"}[line["msg"]]
		if n, ok := line[key].(float64); ok && key != "" {
			total, found = total+int64(n), true
		}
	})
	if !found {
		t.Logf("no rebuild or resync in the engine logs of %s", vol)
	}
	return total, found
}

// engineLog calls fn for each JSON line of the logs of every engine
// process the volume had on any node.
func engineLog(t *testing.T, vol string, fn func(line map[string]any)) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dev.DataDir, "nodes", "*", "log", "engine-"+vol+".log"))
	for _, l := range logs {
		f, err := os.Open(l)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil {
				fn(line)
			}
		}
		f.Close()
	}
}

// killAgent SIGKILLs node's agent and returns its command line, for
// restartAgent.
func killAgent(t *testing.T, node string) []string {
	t.Helper()
	// The primary's agent: a dr-site (make faults) has nodes of the same names.
	pids := dev.Procs("node --name "+node+" ", "--data-dir "+filepath.Join(dev.DataDir, "nodes", node)+" ")
	require.Len(t, pids, 1, "agent of %s", node)
	argv, err := testutil.Cmdline(pids[0])
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	require.Eventually(t, func() bool { return testutil.Zombie(pids[0]) }, wait, tick)
	return argv
}

// restartAgent starts argv (a killed agent's command line) again in
// node's namespace.
func restartAgent(t *testing.T, node string, argv []string) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(dev.DataDir, "nodes", node, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	defer logf.Close()
	cmd, err := network.Command(node, argv[0], argv[1:]...)
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	dev.Started(cmd)
}

func clientKey(name string) client.ObjectKey { return client.ObjectKey{Name: name} }

// setReplicas sets the replicas of the volume's policy (named as the
// volume).
func setReplicas(t *testing.T, name string, n int32) {
	t.Helper()
	testutil.Patch(t, k8s, &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}, func(p *v1.VolumePolicy) { p.Spec.Replicas = n })
}
