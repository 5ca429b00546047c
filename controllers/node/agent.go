package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
)

// Contract names shared with the manager (see doc.go and api/v1alpha1
// wellknown.go).
const (
	// SystemNamespace holds token Secrets and node Leases.
	SystemNamespace = cairnv1.SystemNamespace
	// VolumeLabel names the volume of a Replica, Engine or token Secret.
	VolumeLabel = cairnv1.LabelVolume
	// TokenKey is the Secret data key holding the token.
	TokenKey = cairnv1.TokenKey
	// ReplicaFinalizer guards a replica's data directory.
	ReplicaFinalizer = cairnv1.FinalizerReplicaData
	// EngineFinalizer guards an engine's process, mount and loop device.
	EngineFinalizer = cairnv1.FinalizerEngine
	// LeasePrefix + node name is the node's heartbeat Lease.
	LeasePrefix = cairnv1.NodeLeasePrefix
	// LeaseDurationSeconds is how long a Lease stays valid without renewal.
	LeaseDurationSeconds = 20
)

// Options configure a node agent.
type Options struct {
	// Name of the node (the CairnNode's name, Replica/Engine spec.nodeID).
	Name string
	// DataDir holds replicas, mounts, sockets, tokens, pid files and logs.
	DataDir string
	// Zone is reported in CairnNode status.zone.
	Zone string
	// Address is the host replicas listen on and report (default 127.0.0.1).
	Address string
	// ReplicaPorts is the range "LO-HI" replica ports are chosen from
	// (default DefaultReplicaPorts).
	ReplicaPorts string
	// Binary is the cairn executable children run (default os.Executable()).
	Binary string
	// PlaintextTCP starts replicas and engines with --tls=false: their
	// TCP connections are not encrypted (for measuring what TLS costs).
	// The agent's own connections to replicas follow the process policy
	// (netx.SetPlaintextTCP), which cairn node sets from the same flag.
	PlaintextTCP bool
	// HeartbeatInterval is how often the Lease and CairnNode status are
	// renewed (default 5s).
	HeartbeatInterval time.Duration
	// PollInterval is how often a running engine's status is read (default 5s).
	PollInterval time.Duration
	// Log is the agent's logger.
	Log logr.Logger
	// Setup, when set, adds more to the agent's manager (cairn node adds
	// the CSI node service, csi.AddNode).
	Setup func(ctrl.Manager) error
}

func (o *Options) defaults() error {
	if o.Name == "" || o.DataDir == "" {
		return errors.New("node agent: name and data directory are required")
	}
	if o.Address == "" {
		o.Address = "127.0.0.1"
	}
	if o.ReplicaPorts == "" {
		o.ReplicaPorts = DefaultReplicaPorts
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("node agent: find own executable: %w", err)
		}
		o.Binary = exe
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = 5 * time.Second
	}
	if o.PollInterval == 0 {
		o.PollInterval = 5 * time.Second
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return err
	}
	o.DataDir = dir
	return nil
}

// Agent is one node agent: its reconcilers, heartbeat and child processes.
type Agent struct {
	opts     Options
	recorder recorder.EventRecorder
	sup      *Supervisor
	loops    *loopTable
	replicaC chan event.GenericEvent
	engineC  chan event.GenericEvent
	backupC  chan event.GenericEvent
	done     chan struct{}
	// stores opens the BackupTargets replicas are restored from and
	// backups are written to.
	stores targets.Cache
	// jobs are the restores and backups running in the agent.
	jobs jobTable
	// ports chooses replica ports and holds those of stopped replicas.
	ports *ports
	// controls are the control clients of the engines on this node.
	controls controlClients
}

// New prepares the agent's directories and supervisor.
func New(opts Options) (*Agent, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	pr, err := parsePortRange(opts.ReplicaPorts)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		ports:    &ports{host: opts.Address, r: pr},
		opts:     opts,
		loops:    &loopTable{m: map[string]loopAttachment{}},
		replicaC: make(chan event.GenericEvent, 256),
		engineC:  make(chan event.GenericEvent, 256),
		backupC:  make(chan event.GenericEvent, 64),
		done:     make(chan struct{}),
	}
	for _, d := range []string{a.runDir(), a.stateDir(), a.logDir(), filepath.Join(opts.DataDir, "replicas"), filepath.Join(opts.DataDir, "mnt")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, err
		}
	}
	a.sup = &Supervisor{
		Binary: opts.Binary, RunDir: a.runDir(), LogDir: a.logDir(), Marker: opts.DataDir,
		Log: opts.Log.WithName("supervisor"), Notify: a.notify,
	}
	return a, nil
}

// Run starts a manager for the agent on cfg and serves until ctx is done,
// then stops every child (engines first, so they flush to their replicas).
func Run(ctx context.Context, cfg *rest.Config, opts Options) error {
	a, err := New(opts)
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  NewScheme(),
		Metrics: metricsserver.Options{BindAddress: "0"},
		Client: client.Options{Cache: &client.CacheOptions{
			// Tokens, the node's Lease and CairnNode are read directly: the
			// agent never caches Secrets and watches nothing it does not need.
			DisableFor: []client.Object{&corev1.Secret{}, &coordinationv1.Lease{}, &cairnv1.CairnNode{}},
		}},
		Logger: opts.Log,
	})
	if err != nil {
		return fmt.Errorf("node agent: create manager: %w", err)
	}
	if err := a.Setup(mgr); err != nil {
		return err
	}
	if opts.Setup != nil {
		if err := opts.Setup(mgr); err != nil {
			return err
		}
	}
	return a.Start(ctx, mgr)
}

// The CSI node service that Options.Setup may add reads the Volumes it stages.
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumes,verbs=get

// NewScheme returns a scheme with the Kubernetes built-in kinds and Cairn's.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(cairnv1.AddToScheme(s))
	return s
}

// Setup registers the agent's reconcilers and heartbeat with mgr.
func (a *Agent) Setup(mgr ctrl.Manager) error {
	a.recorder = mgr.GetEventRecorder("cairn-node")
	// Several objects reconcile at once: stopping one child may take a while.
	opts := controller.Options{SkipNameValidation: ptr.To(true), MaxConcurrentReconciles: 4}
	rr := &ReplicaReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Agent: a}
	if err := rr.SetupWithManager(mgr, opts); err != nil {
		return err
	}
	er := &EngineReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Agent: a}
	if err := er.SetupWithManager(mgr, opts); err != nil {
		return err
	}
	sr := &SnapshotReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Agent: a}
	if err := sr.SetupWithManager(mgr, opts); err != nil {
		return err
	}
	br := &BackupReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Agent: a}
	if err := br.SetupWithManager(mgr, opts); err != nil {
		return err
	}
	hb := &Heartbeat{Client: mgr.GetClient(), Agent: a}
	return mgr.Add(hb)
}

// Start cleans up what an earlier agent left behind, runs mgr until ctx is
// done and then stops every child.
func (a *Agent) Start(ctx context.Context, mgr ctrl.Manager) error {
	defer close(a.done)
	log := a.opts.Log
	if err := a.cleanupLeftovers(ctx); err != nil {
		return startErr(ctx, "clean up after an earlier agent", err)
	}
	if err := a.removeOrphans(ctx, mgr.GetAPIReader()); err != nil {
		return startErr(ctx, "remove data of deleted replicas", err)
	}
	err := mgr.Start(ctx)
	log.Info("Stopping children")
	sctx, cancel := context.WithTimeout(context.Background(), 2*stopTimeout)
	defer cancel()
	a.shutdown(sctx)
	return err
}

// startErr is a failure of a start phase, or nothing when the agent was
// stopped while starting (ctx done): that is a clean stop.
func startErr(ctx context.Context, phase string, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("node agent: %s: %w", phase, err)
}

// shutdown detaches loop devices, stops engines, then replicas.
func (a *Agent) shutdown(ctx context.Context) {
	for _, vol := range a.loops.volumes() {
		if err := a.detachFrontend(ctx, vol); err != nil {
			a.opts.Log.Error(err, "Detaching loop device failed", "volume", vol)
		}
	}
	a.sup.StopAll(ctx, enginePrefix)
	a.jobs.stopAll()
	a.sup.StopAll(ctx, replicaPrefix)
	a.ports.releaseAll()
	a.unmountAll()
}

// cleanupLeftovers adopts the children an earlier agent left running (a
// crashed or killed agent: its engines keep serving their devices, so
// filesystems mounted on them stay usable), then detaches the other loop
// devices on files under DIR/mnt, stops children recorded in pid files
// that could not be adopted and unmounts the other FUSE mounts. Each
// adopted child's object is reconciled, which stops it if it is gone.
func (a *Agent) cleanupLeftovers(ctx context.Context) error {
	adopted := a.sup.Adopt(markOfKey)
	keep := map[string]bool{}
	for _, key := range adopted {
		if vol, ok := strings.CutPrefix(key, enginePrefix); ok {
			keep[a.mountpoint(vol)] = true
		}
	}
	for _, l := range loopsUnder(a.mntDir() + "/") {
		if keep[filepath.Dir(l.file)] {
			continue
		}
		a.opts.Log.Info("Detaching leftover loop device", "device", l.dev, "file", l.file)
		if err := clearLoop(l.dev, l.file); err != nil {
			return err
		}
	}
	if err := a.sup.KillLeftovers(ctx, markOfKey); err != nil {
		return err
	}
	for _, m := range mountsUnder(a.mntDir() + "/") {
		if keep[m] {
			continue
		}
		if err := unmount(m); err != nil {
			a.opts.Log.Error(err, "Unmount failed", "mountpoint", m)
		}
	}
	for _, key := range adopted {
		a.notify(key)
	}
	return nil
}

// removeOrphans deletes the data of replicas whose Replica object is gone:
// the manager replaced them and released them while this node was away.
// It runs before any reconciler, reading the API server directly, so a
// replica created meanwhile cannot be mistaken for one.
func (a *Agent) removeOrphans(ctx context.Context, r client.Reader) error {
	var list cairnv1.ReplicaList
	if err := r.List(ctx, &list); err != nil {
		return err
	}
	live := map[string]bool{}
	for _, rep := range list.Items {
		live[rep.Name] = true
	}
	entries, err := os.ReadDir(a.replicaDir(""))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !live[e.Name()] {
			// An adopted process of the replica goes first.
			if err := a.sup.Stop(ctx, replicaPrefix+e.Name()); err != nil {
				return err
			}
			if err := a.removeReplicaData(ctx, e.Name()); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeReplicaData stops a restore of the replica and deletes its
// directory and state file.
func (a *Agent) removeReplicaData(_ context.Context, name string) error {
	a.jobs.stop(restoreKey(name))
	a.jobs.stop(applyKey(name))
	if err := os.RemoveAll(a.restoreDir(name)); err != nil {
		return err
	}
	if b, err := os.ReadFile(a.stateFile(name)); err == nil {
		var st replicaState
		if json.Unmarshal(b, &st) == nil {
			a.ports.release(st.Port)
		}
	}
	dir := a.replicaDir(name)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("delete replica data: %w", err)
	}
	if err := os.Remove(a.stateFile(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := a.removeHeld(name); err != nil {
		return err
	}
	a.opts.Log.Info("Replica data deleted", "replica", name, "dir", dir)
	return nil
}

// unmountAll lazily unmounts every mount under DIR/mnt.
func (a *Agent) unmountAll() {
	for _, m := range mountsUnder(a.mntDir() + "/") {
		if err := unmount(m); err != nil {
			a.opts.Log.Error(err, "Unmount failed", "mountpoint", m)
		}
	}
}

// notify turns a supervisor event into a reconcile request.
func (a *Agent) notify(key string) {
	var ch chan event.GenericEvent
	var obj client.Object
	switch {
	case strings.HasPrefix(key, replicaPrefix):
		ch, obj = a.replicaC, &cairnv1.Replica{}
		obj.SetName(strings.TrimPrefix(key, replicaPrefix))
	case strings.HasPrefix(key, enginePrefix):
		ch, obj = a.engineC, &cairnv1.Engine{}
		obj.SetName(strings.TrimPrefix(key, enginePrefix))
	case strings.HasPrefix(key, backupPrefix):
		ch, obj = a.backupC, &cairnv1.Backup{}
		obj.SetName(strings.TrimPrefix(key, backupPrefix))
	default:
		return
	}
	select {
	case ch <- event.GenericEvent{Object: obj}:
	case <-a.done:
	default:
		// The channel is full: a reconcile of this object is queued anyway.
		go func() {
			select {
			case ch <- event.GenericEvent{Object: obj}:
			case <-a.done:
			}
		}()
	}
}

// Children keys: a prefix and the Replica or Engine name; job keys of
// backups: backupPrefix and the Backup name.
const (
	replicaPrefix = "replica-"
	enginePrefix  = "engine-"
	backupPrefix  = "backup/"
)

// markOfKey is the argv sequence identifying the child recorded under key.
func markOfKey(key string) string {
	if name, ok := strings.CutPrefix(key, replicaPrefix); ok {
		return replicaMark(name)
	}
	if vol, ok := strings.CutPrefix(key, enginePrefix); ok {
		return engineMark(vol)
	}
	return "\x00cairn-unknown-child\x00"
}

func replicaMark(name string) string { return "\x00--replica\x00" + name + "\x00" }
func engineMark(vol string) string   { return "\x00engine\x00--volume\x00" + vol + "\x00" }

func (a *Agent) runDir() string   { return filepath.Join(a.opts.DataDir, "run") }
func (a *Agent) stateDir() string { return filepath.Join(a.opts.DataDir, "state") }
func (a *Agent) logDir() string   { return filepath.Join(a.opts.DataDir, "log") }
func (a *Agent) mntDir() string   { return filepath.Join(a.opts.DataDir, "mnt") }
func (a *Agent) replicaDir(name string) string {
	return filepath.Join(a.opts.DataDir, "replicas", name)
}
func (a *Agent) stateFile(name string) string { return filepath.Join(a.stateDir(), name+".json") }
func (a *Agent) tokenFile(vol string) string  { return filepath.Join(a.runDir(), vol+".token") }
func (a *Agent) controlAddr(vol string) string {
	return "unix:" + filepath.Join(a.runDir(), vol+".ctl")
}
func (a *Agent) nbdAddr(vol string) string    { return "unix:" + filepath.Join(a.runDir(), vol+".nbd") }
func (a *Agent) mountpoint(vol string) string { return filepath.Join(a.mntDir(), vol) }

// tlsArgs are the children's flags for Options.PlaintextTCP.
func (a *Agent) tlsArgs() []string {
	if a.opts.PlaintextTCP {
		return []string{"--tls=false"}
	}
	return nil
}
func (a *Agent) volumeFile(vol string) string { return filepath.Join(a.mntDir(), vol, vol) }
