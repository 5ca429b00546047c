package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/config"
	"github.com/cairnstore/cairn/dashboard"
	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/netx"
)

func init() { addCommand(newDevCmd) }

type devOptions struct {
	dataDir string
	binDir  string
	samples bool
	// noScheduler leaves the scheduler out of the manager.
	noScheduler bool
	nodes       int
	verbosity   int
	// dashboard is the manager's dashboard; dev picks its loopback address.
	dashboard dashboard.Options
	// drSite also starts the second local cluster dr-site (dev_drsite.go).
	drSite bool
	// netns runs each node in its own network namespace (dev_netns.go).
	netns bool
	// managerProcess runs the manager as a supervised child process
	// (dev_manager.go).
	managerProcess bool
	// examples, demo: the GitOps repository and live view (dev_examples.go).
	examples string
	headless bool
}

func newDevCmd() *cobra.Command {
	o := devOptions{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run Cairn on an embedded local control plane (etcd + kube-apiserver) with the samples applied",
		Long: `dev starts etcd and kube-apiserver on free loopback ports with state under
--data-dir, installs Cairn's CRDs and webhooks, runs the manager in-process,
applies config/samples, and prints the kubeconfig to look with. Ctrl-C stops
everything; a second run reuses the data directory.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if o.examples != "" {
				o.samples = false // the examples' policies replace the samples'
			}
			return runDev(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", ".cairn/dev", "directory for etcd data, the kubeconfig and logs")
	f.StringVar(&o.binDir, "bin-dir", "", "directory holding etcd and kube-apiserver (default: next to this binary, else ./bin)")
	f.BoolVar(&o.samples, "samples", true, "apply config/samples once the control plane is up")
	f.IntVar(&o.nodes, "nodes", 3, "simulated nodes: node agents dev-node-1..N in zones a, b, c, each with its own data directory under --data-dir/nodes")
	f.IntVarP(&o.verbosity, "v", "v", 0, "log verbosity (0 info, 1+ debug)")
	f.BoolVar(&o.netns, "netns", false, "run each simulated node (agent, replicas, engines) in its own network namespace on a bridge, so their traffic crosses a real network (root)")
	f.BoolVar(&o.managerProcess, "manager-process", false, "run the manager as a child process (`cairn manager`, log in --data-dir/manager.log) that is started again whenever it dies, so tests can SIGKILL it")
	f.BoolVar(&o.noScheduler, "no-scheduler", false, "run without the RecurringSnapshot scheduler (for tests that drive their own with an injected clock)")
	_ = f.MarkHidden("no-scheduler")
	f.BoolVar(&o.dashboard.Actions, "dashboard-actions", true, "allow the dashboard's actions (dev serves it on loopback only)")
	f.StringVar(&o.dashboard.ProxySecretFile, "dashboard-proxy-secret-file", "", "trust a proxy sending this secret to name callers (see docs/dashboard.md)")
	f.BoolVar(&o.drSite, "dr-site", false, "also start a second local cluster, dr-site (state and kubeconfig under --data-dir/dr-site), that keeps the samples' DisasterRecoveryVolume following the primary's backups")
	addExamplesFlags(f, &o)
	return cmd
}

// devRun is one `cairn dev` session: its phases start what it runs and
// push how to stop it; cleanup stops everything in reverse order.
type devRun struct {
	opts       devOptions
	dataDir    string
	kubeconfig string
	logFile    *os.File
	cluster    *localcluster.Cluster
	mgrDone    chan error
	client     client.Client
	nodes      []*devNode
	network    *devNetwork // with --netns
	s3         *devS3
	csi        *devCSI
	metrics    string // the manager's metrics address
	applied    int
	drSite     *devDRSite
	demo       *devDemo
	stops      []func()
}

func runDev(ctx context.Context, o devOptions) error {
	d := &devRun{opts: o}
	defer d.cleanup()
	for _, phase := range []func(context.Context) error{d.prepare, d.startControlPlane, d.startManager, d.startNodes, d.startCSI, d.startS3, d.applySamples, d.startDRSite, d.applyExamples} {
		if err := phase(ctx); err != nil {
			return err
		}
	}
	d.printBanner()
	if err := d.startDemo(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		fmt.Println("\nInterrupted, shutting down...")
		return nil
	case err := <-d.mgrDone:
		d.mgrDone <- err
		return fmt.Errorf("manager stopped: %w", err)
	}
}

func (d *devRun) onStop(fn func()) { d.stops = append(d.stops, fn) }

func (d *devRun) cleanup() {
	for i := len(d.stops) - 1; i >= 0; i-- {
		d.stops[i]()
	}
}

// prepare locks the data directory and refuses to start over processes an
// earlier run left behind.
func (d *devRun) prepare(context.Context) error {
	dataDir, err := filepath.Abs(d.opts.dataDir)
	if err != nil {
		return err
	}
	d.dataDir = dataDir
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	unlock, err := lockDataDir(dataDir)
	if err != nil {
		return err
	}
	d.onStop(unlock)
	if left := leftoverControlPlane(d.pidFile(), d.etcdDir()); len(left) > 0 {
		return fmt.Errorf("control plane processes left by an earlier run are still running (%s); stop them first: kill %s",
			strings.Join(left, ", "), strings.Join(pidsOf(left), " "))
	}
	d.logFile, err = os.OpenFile(filepath.Join(dataDir, "controlplane.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	d.onStop(func() { d.logFile.Close() })
	ctrl.SetLogger(newLoggerTo(d.logOutput(), d.opts.verbosity))
	return nil
}

func (d *devRun) etcdDir() string { return filepath.Join(d.dataDir, "etcd") }
func (d *devRun) pidFile() string { return filepath.Join(d.dataDir, "controlplane.pids") }

// csiControllerSocket is where the manager serves the CSI controller
// service; each node agent serves its node service at
// DATA/nodes/NAME/csi.sock (devNodeCSISocket).
func (d *devRun) csiControllerSocket() string {
	return filepath.Join(d.dataDir, "csi", "controller.sock")
}

// startControlPlane runs etcd, kube-apiserver and kube-controller-manager
// and writes the admin kubeconfig.
func (d *devRun) startControlPlane(context.Context) error {
	fmt.Printf("Starting etcd, kube-apiserver and kube-controller-manager (state in %s, output in %s)...\n", d.etcdDir(), d.logFile.Name())
	cluster, err := localcluster.Start(localcluster.Options{BinDir: devBinDir(d.opts.binDir), EtcdDataDir: d.etcdDir(), Out: d.logFile,
		ControllerManager: true, StateDir: d.dataDir})
	if err != nil {
		return err
	}
	d.cluster = cluster
	d.onStop(func() {
		fmt.Println("Stopping the control plane...")
		if err := cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop control plane:", err)
		}
	})
	// envtest starts etcd and kube-apiserver in their own process groups;
	// remember them so a run after a crash can name what is left over.
	_ = os.WriteFile(d.pidFile(), []byte(strings.Join(childPids(os.Getpid()), "\n")+"\n"), 0o600)
	d.kubeconfig = filepath.Join(d.dataDir, "kubeconfig")
	return writeKubeconfig(cluster, d.kubeconfig)
}

// startManager runs the manager in-process and waits for its webhook.
func (d *devRun) startManager(ctx context.Context) error {
	if d.opts.managerProcess {
		return d.startManagerProcess(ctx)
	}
	port, err := netx.FreePort("127.0.0.1")
	if err != nil {
		return err
	}
	d.metrics = fmt.Sprintf("127.0.0.1:%d", port)
	if d.opts.dashboard.Addr, err = freeLoopbackAddr(); err != nil {
		return err
	}
	if d.opts.drSite {
		// The dashboard shows the DR site's pairs too (its kubeconfig
		// appears once startDRSite has run).
		d.opts.dashboard.Sites = []dashboard.Site{{Name: "dr-site", Kubeconfig: filepath.Join(d.dataDir, "dr-site", "kubeconfig")}}
	}
	mo := managerOptions{metricsAddr: d.metrics, probeAddr: "0", noScheduler: d.opts.noScheduler, csiEndpoint: "unix://" + d.csiControllerSocket(),
		dashboard: d.opts.dashboard}
	mgr, err := newManager(d.cluster.Config, mo, d.cluster.WebhookOptions())
	if err != nil {
		return err
	}
	mgrCtx, cancel := context.WithCancel(ctx)
	d.mgrDone = make(chan error, 1)
	go func() { d.mgrDone <- mgr.Start(mgrCtx) }()
	d.onStop(func() {
		cancel()
		<-d.mgrDone
	})
	if err := waitWebhook(ctx, mgr.GetWebhookServer().StartedChecker(), d.mgrDone); err != nil {
		return err
	}
	d.client, err = client.New(d.cluster.Config, client.Options{Scheme: mgr.GetScheme()})
	return err
}

// startNodes creates cairn-system and starts the node agents.
func (d *devRun) startNodes(ctx context.Context) error {
	if err := ensureSystemNamespace(ctx, d.client); err != nil {
		return err
	}
	kubeconfig, command, err := d.nodeNetwork()
	if err != nil {
		return err
	}
	nodes, err := startDevNodes(d.dataDir, kubeconfig, d.opts.nodes, command)
	if err != nil {
		return err
	}
	d.nodes = nodes
	d.onStop(func() {
		fmt.Println("Stopping the node agents...")
		stopDevNodes(nodes)
	})
	return nil
}

// applySamples applies config/samples through kustomize when asked.
func (d *devRun) applySamples(ctx context.Context) error {
	if !d.opts.samples {
		return nil
	}
	objs, err := localcluster.Build(config.Samples, "samples")
	if err != nil {
		return err
	}
	objs = d.primarySamples(objs)
	if err := d.localTargets(objs); err != nil {
		return err
	}
	if err := localcluster.Apply(ctx, d.client, "cairn-dev", objs); err != nil {
		return fmt.Errorf("apply samples: %w", err)
	}
	d.applied = len(objs)
	return nil
}

// localTargets points the samples' file:// BackupTargets (a path on a
// real node) at the local S3 server, or without one at DIR/backups, so the
// local cluster writes nothing outside its data directory and the target
// exists.
func (d *devRun) localTargets(objs []*unstructured.Unstructured) error {
	dir := filepath.Join(d.dataDir, "backups")
	for _, o := range objs {
		url, _, _ := unstructured.NestedString(o.Object, "spec", "url")
		if o.GetKind() != "BackupTarget" || !strings.HasPrefix(url, "file://") {
			continue
		}
		if d.s3 != nil {
			if err := d.s3.pointAtS3(o); err != nil {
				return err
			}
			continue
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := unstructured.SetNestedField(o.Object, "file://"+dir, "spec", "url"); err != nil {
			return err
		}
	}
	return nil
}

// printBanner prints what runs, on labelled lines other tools parse.
func (d *devRun) printBanner() {
	wh := d.cluster.WebhookOptions()
	fmt.Printf(`
Cairn dev is running.
  API server   %s
  kubeconfig   %s
  manager      in-process (validating webhook on %s:%d)
  metrics      http://%s/metrics
  dashboard    http://%s/
  nodes        %d node agents (logs in %s/nodes/NAME/node.log)
  samples      %s
  S3 target    %s
  CSI          %s (nodes: %s)
%s%s
Look around with any Kubernetes client:
  export KUBECONFIG=%s
  %s get cairn

Press Ctrl-C to stop.
`, d.cluster.Config.Host, d.kubeconfig, wh.Host, wh.Port, d.metrics, d.opts.dashboard.Addr, len(d.nodes), d.dataDir, d.samplesLine("dev-primary", fmt.Sprintf("%d objects applied from config/samples", d.applied)), d.s3Line(),
		d.csiControllerSocket(), filepath.Join(d.dataDir, "nodes", "NAME", devNodeCSISocket), d.csiBanner(), d.drSiteBanner(), d.kubeconfig, d.kubectl())
}

// s3Line describes the local S3 target.
func (d *devRun) s3Line() string {
	if d.s3 == nil {
		return "none (versitygw not built); backups go to " + filepath.Join(d.dataDir, "backups")
	}
	return fmt.Sprintf("%s bucket %s (versitygw, data in %s; keys in Secret %s/%s)", d.s3.endpoint, devS3Bucket, filepath.Join(d.dataDir, "s3"), v1.SystemNamespace, devS3Secret)
}

// kubectl is the kubectl `make tools` built beside the control plane (a
// fresh machine has no other), else the one on PATH.
func (d *devRun) kubectl() string {
	bin, err := filepath.Abs(filepath.Join(devBinDir(d.opts.binDir), "kubectl"))
	if err != nil {
		return "kubectl"
	}
	if _, err := os.Stat(bin); err != nil {
		return "kubectl"
	}
	return bin
}

// devBinDir finds etcd and kube-apiserver: the flag, then the directory of
// this binary (make builds everything into bin/), then ./bin.
func devBinDir(flag string) string {
	if flag != "" {
		return flag
	}
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err == nil {
			return dir
		}
	}
	return "bin"
}

// lockDataDir takes an exclusive flock on dataDir/lock so that two dev runs
// never share one etcd. The kernel drops the lock when the process dies, so
// a crashed run leaves no stale lock.
func lockDataDir(dataDir string) (func(), error) {
	path := filepath.Join(dataDir, "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another `cairn dev` (pid %s) is using %s; stop it first or pass --data-dir", strings.TrimSpace(string(pid)), dataDir)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { _ = f.Truncate(0); f.Close() }, nil
}

// leftoverControlPlane returns "name (pid N)" for every etcd or
// kube-apiserver an earlier run recorded in pidFile that is still alive, and
// for any etcd using etcdDir.
func leftoverControlPlane(pidFile, etcdDir string) []string {
	var left []string
	seen := map[string]bool{}
	data, _ := os.ReadFile(pidFile)
	for _, pid := range strings.Fields(string(data)) {
		if name, _ := processName(pid); name == "etcd" || name == "kube-apiserver" || name == "kube-controller-manager" {
			left = append(left, fmt.Sprintf("%s (pid %s)", name, pid))
			seen[pid] = true
		}
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if name, cmdline := processName(e.Name()); name == "etcd" && !seen[e.Name()] && strings.Contains(cmdline, etcdDir) {
			left = append(left, fmt.Sprintf("etcd (pid %s)", e.Name()))
		}
	}
	return left
}

// processName returns the base name of a live process's executable and its
// command line; empty when the pid does not exist.
func processName(pid string) (string, string) {
	if _, err := strconv.Atoi(pid); err != nil {
		return "", ""
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
	if err != nil || len(cmdline) == 0 {
		return "", ""
	}
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	return filepath.Base(argv0), string(cmdline)
}

// childPids lists the pids of the direct children of parent.
func childPids(parent int) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if st, ok := readProcStat(e.Name()); ok && st.ppid == strconv.Itoa(parent) {
			out = append(out, e.Name())
		}
	}
	return out
}

// procStat holds the fields of /proc/PID/stat that dev and its test use.
type procStat struct{ state, ppid, pgrp string }

// readProcStat parses /proc/PID/stat; the fields after the ")" that ends
// the command name are: state ppid pgrp ...
func readProcStat(pid string) (procStat, bool) {
	stat, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return procStat{}, false
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 3 {
		return procStat{}, false
	}
	return procStat{state: f[0], ppid: f[1], pgrp: f[2]}, true
}

func pidsOf(left []string) []string {
	var pids []string
	for _, l := range left {
		pids = append(pids, strings.TrimSuffix(l[strings.Index(l, "pid ")+4:], ")"))
	}
	return pids
}

// freeLoopbackAddr is 127.0.0.1 with a free port.
func freeLoopbackAddr() (string, error) {
	port, err := netx.FreePort("127.0.0.1")
	return fmt.Sprintf("127.0.0.1:%d", port), err
}

func writeKubeconfig(c *localcluster.Cluster, path string) error {
	data, err := c.Kubeconfig("cairn-dev-admin")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// waitWebhook waits until the webhook server serves, so that applying the
// samples does not race the admission webhook.
func waitWebhook(ctx context.Context, started func(*http.Request) error, mgrDone chan error) error {
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		if started(nil) == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-mgrDone:
			mgrDone <- err
			return fmt.Errorf("manager stopped before its webhook server started: %w", err)
		case <-deadline.C:
			return errors.New("webhook server did not start within 60s")
		case <-time.After(100 * time.Millisecond):
		}
	}
}
