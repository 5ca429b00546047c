package testutil

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DevSuite is a running dev-based suite: `cairn dev` on the suite's
// temporary directory, and clients of its clusters.
type DevSuite struct {
	*Dev
	// Tmp is the suite's temporary directory (dev's data directory is
	// Tmp/dev, its output Tmp/dev.log).
	Tmp string
	// Site is dev's cluster; DRSite is its dr-site's (--dr-site), else nil.
	Site, DRSite *DevSite

	mu      sync.Mutex
	started []*exec.Cmd
}

// DevSite is one cluster of a `cairn dev`.
type DevSite struct {
	Kubeconfig string
	Config     *rest.Config
	// Client reads and writes Cairn's kinds and client-go's.
	Client client.Client
}

// DevSuiteOptions says what a dev-based suite needs, how its `cairn dev`
// runs and what the suite does around its tests. The hooks run in this
// order: Prepare, (dev starts, nodes Ready) Setup, the tests, Teardown,
// (processes from Started stop, dev stops) AfterStop.
type DevSuiteOptions struct {
	// RootFor says what the suite needs root for ("loop devices, FUSE").
	RootFor string
	// Bin lists what the suite needs built in bin/ besides the control
	// plane dev always runs (etcd, kube-apiserver, kube-controller-manager).
	Bin []string
	// Tools lists the tools the suite needs in PATH.
	Tools []string
	// TempPrefix is the pattern of the suite's temporary directory
	// (os.MkdirTemp).
	TempPrefix string
	// KeepTempOnFailure keeps the temporary directory after a failing run,
	// for its logs, and says where it is.
	KeepTempOnFailure bool
	// Args are dev's flags.
	Args []string
	// Prepare runs before dev starts, on the temporary directory, and
	// returns more flags for dev (files dev reads, made in tmp).
	Prepare func(tmp string) ([]string, error)
	// Nodes and DRNodes are how many CairnNodes must be Ready on dev's
	// cluster and on its dr-site before Setup, each within NodesTimeout (2
	// minutes when 0); 0 waits for none.
	Nodes, DRNodes int
	NodesTimeout   time.Duration
	// RecordHealth starts StartHealthRecorder on each cluster, so that with
	// $CAIRN_RECORD_HEALTH set every state the suite's objects pass through
	// is recorded for config's Argo CD health test.
	RecordHealth bool
	// LogTailsOnFailure prints the end of dev's logs (Dev.PrintLogTails)
	// when connecting, Setup or the tests failed, before dev stops.
	LogTailsOnFailure bool
	// Setup runs once dev runs and its nodes are Ready, before the tests.
	Setup func(*DevSuite) error
	// Teardown runs after the tests, or after Setup failed (so it must
	// cope with a Setup done halfway), before dev stops; failed says
	// whether the suite failed so far. An error fails the suite.
	Teardown func(s *DevSuite, failed bool) error
	// AfterStop runs once dev stopped (after it started at all). An error
	// fails the suite.
	AfterStop func(s *DevSuite, failed bool) error
}

// RunDevSuite runs m against `cairn dev` as opts say and returns the exit
// code. What the suite needs missing (root, a tool) skips it, except on CI
// where it fails it. The temporary directory goes at the end (with
// KeepTempOnFailure, only after a passing run).
func RunDevSuite(m *testing.M, suite string, opts DevSuiteOptions) int {
	ctrl.SetLogger(logr.Discard())
	if why := opts.missing(); why != "" {
		fmt.Fprintf(os.Stderr, "%s: %s\n", suite, why)
		if OnCI() {
			return 1
		}
		fmt.Fprintf(os.Stderr, "skipping the %s (not on CI)\n", suite)
		return 0
	}
	tmp, err := os.MkdirTemp("", opts.TempPrefix)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", suite, err)
		return 1
	}
	code := 1
	defer func() { removeTemp(suite, tmp, opts.KeepTempOnFailure && code != 0) }()
	s, err := startDevSuite(tmp, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", suite, err)
		return code
	}
	code = s.run(m, suite, opts)
	return code
}

// missing names what the suite cannot run without, or "".
func (opts DevSuiteOptions) missing() string {
	if os.Geteuid() != 0 {
		return "needs root (" + opts.RootFor + ")"
	}
	for _, tool := range append([]string{"etcd", "kube-apiserver", "kube-controller-manager"}, opts.Bin...) {
		if _, err := os.Stat(filepath.Join(BinDir(), tool)); err != nil {
			return tool + " not built: run `make tools`"
		}
	}
	for _, tool := range opts.Tools {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not installed: " + installHint(tool)
		}
	}
	return ""
}

// removeTemp removes the suite's temporary directory, or says where it
// stays.
func removeTemp(suite, tmp string, keep bool) {
	if !keep {
		_ = os.RemoveAll(tmp)
		return
	}
	fmt.Fprintf(os.Stderr, "%s: failed; logs kept in %s (dev.log, dev/**/*.log); remove it when done\n", suite, tmp)
}

// startDevSuite runs opts.Prepare and starts dev on tmp.
func startDevSuite(tmp string, opts DevSuiteOptions) (*DevSuite, error) {
	args := opts.Args
	if opts.Prepare != nil {
		more, err := opts.Prepare(tmp)
		if err != nil {
			return nil, err
		}
		args = append(append([]string(nil), args...), more...)
	}
	dev, err := StartDev(tmp, args...)
	if err != nil {
		return nil, err
	}
	return &DevSuite{Dev: dev, Tmp: tmp}, nil
}

// run connects to dev's clusters, runs Setup, the tests and Teardown,
// stops what the tests started and dev, and runs AfterStop; it returns
// the exit code.
func (s *DevSuite) run(m *testing.M, suite string, opts DevSuiteOptions) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	code, setupRan := 1, false
	if err := s.connect(ctx, opts); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v (log: %s)\n", suite, err, s.Out.Name())
	} else {
		setupRan = true
		code = s.setupAndTest(m, suite, opts.Setup)
	}
	if code != 0 && opts.LogTailsOnFailure {
		s.PrintLogTails(os.Stderr)
	}
	if setupRan && opts.Teardown != nil {
		code = failOn(suite, opts.Teardown(s, code != 0), code)
	}
	s.stopStarted()
	if err := s.Stop(); err != nil {
		code = failOn(suite, fmt.Errorf("stop cairn dev: %w", err), code)
	}
	if opts.AfterStop != nil {
		code = failOn(suite, opts.AfterStop(s, code != 0), code)
	}
	return code
}

// setupAndTest runs setup, then the tests when it succeeded.
func (s *DevSuite) setupAndTest(m *testing.M, suite string, setup func(*DevSuite) error) int {
	if setup != nil {
		if err := setup(s); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", suite, err)
			return 1
		}
	}
	return m.Run()
}

// failOn prints err and returns 1 when there is one, else code.
func failOn(suite string, err error, code int) int {
	if err == nil {
		return code
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", suite, err)
	return 1
}

// connect makes the clients of dev's cluster and of its dr-site when it
// runs one, and waits for their nodes.
func (s *DevSuite) connect(ctx context.Context, opts DevSuiteOptions) error {
	timeout := cmp.Or(opts.NodesTimeout, 2*time.Minute)
	var err error
	if s.Site, err = connectSite(ctx, s.Kubeconfig, opts.Nodes, timeout, opts.RecordHealth); err != nil {
		return err
	}
	if path := s.Banner["dr-site kubeconfig"]; path != "" {
		if s.DRSite, err = connectSite(ctx, path, opts.DRNodes, timeout, opts.RecordHealth); err != nil {
			return fmt.Errorf("dr-site: %w", err)
		}
	}
	return nil
}

// connectSite makes a client of the cluster of kubeconfig, starts the
// health recorder on it while ctx lives when record is set, and waits
// until nodes CairnNodes are Ready.
func connectSite(ctx context.Context, kubeconfig string, nodes int, timeout time.Duration, record bool) (*DevSite, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %q: %w", kubeconfig, err)
	}
	c, err := client.New(cfg, client.Options{Scheme: EnvtestScheme()})
	if err != nil {
		return nil, err
	}
	if record {
		if err := StartHealthRecorder(ctx, cfg); err != nil {
			return nil, err
		}
	}
	if nodes > 0 {
		if err := WaitNodesReady(c, nodes, timeout); err != nil {
			return nil, err
		}
	}
	return &DevSite{Kubeconfig: kubeconfig, Config: cfg, Client: c}, nil
}

// Started hands the suite a process a test started (a node agent started
// again, ...): the suite stops it before it stops dev.
func (s *DevSuite) Started(cmd *exec.Cmd) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started = append(s.started, cmd)
}

// stopStarted asks the processes from Started to stop (SIGTERM, as dev
// stops its own) and waits for them.
func (s *DevSuite) stopStarted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cmd := range s.started {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
	s.started = nil
}

// Procs lists the live processes of this dev (their command line names
// its data directory) whose command line contains every one of words.
func (s *DevSuite) Procs(words ...string) []int {
	return Procs(append(words, s.DataDir)...)
}
