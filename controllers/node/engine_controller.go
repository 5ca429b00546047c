package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/engine/control"
	"github.com/cairnstore/cairn/engine/fuse"
	"github.com/cairnstore/cairn/internal/netx"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=engines,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=engines/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=engines/finalizers,verbs=update

// replicaWait is how long a new engine waits for all its replicas to listen
// before it starts with those that do.
const replicaWait = 30 * time.Second

// EngineReconciler runs the engine of each volume attached to its node as
// a `cairn engine` child, exposes it as a block device and keeps the
// engine's replica set equal to spec.replicas.
type EngineReconciler struct {
	client.Client
	// APIReader reads token Secrets without caching them.
	APIReader client.Reader
	Agent     *Agent

	mu sync.Mutex
	// sizes are the sizes supervised engines were started with: a restart
	// keeps it (its replicas have it) until the engine is torn down.
	sizes map[string]int64
}

// engineScope is what one reconcile of an Engine observes.
type engineScope struct {
	obj       *cairnv1.Engine
	frontend  string
	tokenFile string
	waiting   string // a reason the engine is not started yet
	proc      ProcState
	running   bool // supervised
	status    *engine.Status
	endpoint  string
	pending   []string // membership changes still in flight
	memberErr error    // a membership change the engine refused (retried)
	err       error
}

// SetupWithManager watches the node's Engines and the supervisor's events.
func (r *EngineReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	r.sizes = map[string]int64{}
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool {
		e, ok := o.(*cairnv1.Engine)
		return ok && e.Spec.NodeID == r.Agent.opts.Name || r.supervised(o.GetName())
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("node-engine").
		For(&cairnv1.Engine{}, builder.WithPredicates(mine)).
		WatchesRawSource(source.Channel(r.Agent.engineC, &handler.EnqueueRequestForObject{})).
		WithOptions(opts).
		Complete(r)
}

func (r *EngineReconciler) supervised(vol string) bool {
	_, ok := r.Agent.sup.State(enginePrefix + vol)
	return ok
}

// Reconcile follows the controller skeleton: get, deletion, finalizer,
// deferred status patch, phases.
func (r *EngineReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	obj := &cairnv1.Engine{}
	if err := r.Get(ctx, req.NamespacedName, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, r.teardown(ctx, req.Name)
		}
		return ctrl.Result{}, err
	}
	ctx = log.IntoContext(ctx, log.FromContext(ctx).WithValues("engine", klog.KObj(obj), "volume", obj.Name))
	if obj.Spec.NodeID != r.Agent.opts.Name {
		// Moved away from this node: release what runs here.
		return ctrl.Result{}, r.teardown(ctx, obj.Name)
	}
	if !obj.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, obj)
	}
	if !controllerutil.ContainsFinalizer(obj, EngineFinalizer) {
		patch := client.MergeFrom(obj.DeepCopy())
		controllerutil.AddFinalizer(obj, EngineFinalizer)
		return ctrl.Result{}, r.Patch(ctx, obj, patch)
	}
	p := newStatusPatcher(r.Client, obj)
	before := obj.Status
	defer func() {
		engineEvents(r.Agent.recorder, obj, before)
		if err := p.patch(ctx, obj); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()
	return r.reconcile(ctx, &engineScope{obj: obj})
}

// reconcile runs the phases, then derives the status from what they saw.
func (r *EngineReconciler) reconcile(ctx context.Context, s *engineScope) (ctrl.Result, error) {
	phases := []func(context.Context, *engineScope) (ctrl.Result, error){
		r.reconcileSpec,
		r.reconcileToken,
		r.reconcileReplicaWait,
		r.reconcileProcess,
		r.reconcileControl,
		r.reconcileFrontend,
		r.reconcileSize,
		r.reconcileMembers,
	}
	var res ctrl.Result
	var err error
	for _, phase := range phases {
		res, err = phase(ctx, s)
		if err != nil || !res.IsZero() {
			break
		}
	}
	s.err = err
	res = mergeResult(res, setEngineStatus(s, r.Agent.opts.PollInterval))
	return outcome(res, err)
}

// reconcileSpec checks what the API schema cannot and picks the frontend.
func (r *EngineReconciler) reconcileSpec(_ context.Context, s *engineScope) (ctrl.Result, error) {
	spec := s.obj.Spec
	if n := spec.Size.Value(); n <= 0 || n%4096 != 0 {
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("size %s is not a positive multiple of 4096 bytes", spec.Size.String()))
	}
	if len(spec.Replicas) == 0 {
		return ctrl.Result{}, reconcile.TerminalError(errors.New("spec.replicas lists no replica address"))
	}
	if spec.VolumeName != s.obj.Name {
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("an Engine is named after its volume: name %q, volumeName %q", s.obj.Name, spec.VolumeName))
	}
	fe, err := chooseFrontend(spec.Frontend)
	if err != nil {
		return ctrl.Result{}, reconcile.TerminalError(err)
	}
	s.frontend = fe
	return ctrl.Result{}, nil
}

// reconcileToken writes the volume's token file.
func (r *EngineReconciler) reconcileToken(ctx context.Context, s *engineScope) (ctrl.Result, error) {
	path, err := r.Agent.ensureTokenFile(ctx, r.APIReader, s.obj.Name)
	s.tokenFile = path
	return ctrl.Result{}, err
}

// reconcileReplicaWait holds a new engine back until its replicas listen
// (they start once this Engine exists), for at most replicaWait, so it opens
// the volume on every replica instead of rebuilding late ones.
func (r *EngineReconciler) reconcileReplicaWait(ctx context.Context, s *engineScope) (ctrl.Result, error) {
	if r.supervised(s.obj.Name) {
		return ctrl.Result{}, nil
	}
	up := 0
	for _, addr := range s.obj.Spec.Replicas {
		if reachable(ctx, addr) {
			up++
		}
	}
	waited := time.Since(s.obj.CreationTimestamp.Time)
	if up == len(s.obj.Spec.Replicas) || up > 0 && waited > replicaWait {
		return ctrl.Result{}, nil
	}
	s.waiting = fmt.Sprintf("%d of %d replicas listen", up, len(s.obj.Spec.Replicas))
	return ctrl.Result{RequeueAfter: startingPoll}, nil
}

// reconcileProcess starts the engine child (kept across spec changes:
// membership changes go through the control API).
func (r *EngineReconciler) reconcileProcess(_ context.Context, s *engineScope) (ctrl.Result, error) {
	vol := s.obj.Name
	r.mu.Lock()
	size, ok := r.sizes[vol]
	if !ok {
		size = s.obj.Spec.Size.Value()
		r.sizes[vol] = size
	}
	r.mu.Unlock()
	args := []string{"engine",
		"--volume", vol,
		"--size", strconv.FormatInt(size, 10),
		"--token-file", s.tokenFile,
		"--frontend", s.frontend,
		"--control", r.Agent.controlAddr(vol),
	}
	args = append(args, r.Agent.tlsArgs()...)
	for _, addr := range s.obj.Spec.Replicas {
		args = append(args, "--replica", addr)
	}
	switch s.frontend {
	case frontendNBD:
		args = append(args, "--listen", r.Agent.nbdAddr(vol))
	case frontendFUSE:
		args = append(args, "--mountpoint", r.Agent.mountpoint(vol))
	}
	s.proc = r.Agent.sup.Ensure(enginePrefix+vol, Child{Args: args, Mark: engineMark(vol), PreStart: func() error {
		// A crashed engine leaves its block device on a dead FUSE file and
		// the dead mount in the way of the next one.
		return r.Agent.clearVolume(context.Background(), vol)
	}})
	s.running = true
	if !s.proc.Running {
		return ctrl.Result{RequeueAfter: startingPoll}, nil
	}
	return ctrl.Result{}, nil
}

// reconcileControl reads the engine's status from its control endpoint.
func (r *EngineReconciler) reconcileControl(ctx context.Context, s *engineScope) (ctrl.Result, error) {
	cl, err := r.control(s.obj.Name, s.tokenFile)
	if err != nil {
		return ctrl.Result{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := cl.Status(cctx)
	if err != nil {
		// Not serving yet (opening its replicas) or just crashed.
		return ctrl.Result{RequeueAfter: startingPoll}, nil
	}
	s.status = &st
	return ctrl.Result{}, nil
}

// reconcileFrontend exposes the volume as a block device.
func (r *EngineReconciler) reconcileFrontend(ctx context.Context, s *engineScope) (ctrl.Result, error) {
	var dev string
	var err error
	switch s.frontend {
	case frontendNone:
		return ctrl.Result{}, nil
	case frontendNBD:
		dev, err = r.Agent.ensureNBD(ctx, s.obj.Name, s.proc.PID)
	default:
		dev, err = r.Agent.ensureLoop(ctx, s.obj.Name, s.proc.PID)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if s.obj.Status.Endpoint != dev {
		log.FromContext(ctx).Info("Volume exposed", "endpoint", dev, "frontend", s.frontend)
	}
	s.endpoint = dev
	return ctrl.Result{}, nil
}

// reconcileSize grows a running engine to a larger spec.size online: the
// engine grows its replicas under its I/O barrier, then the loop device
// takes the new capacity (a connected NBD client keeps the size it
// negotiated until it reconnects). Restarts use the grown size. A smaller
// spec.size is never applied: volumes do not shrink.
func (r *EngineReconciler) reconcileSize(ctx context.Context, s *engineScope) (ctrl.Result, error) {
	want := s.obj.Spec.Size.Value()
	if s.status.Size >= want {
		return ctrl.Result{}, nil
	}
	cl, err := r.control(s.obj.Name, s.tokenFile)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := cl.Grow(ctx, want); err != nil {
		return ctrl.Result{}, fmt.Errorf("grow to %d bytes: %w", want, err)
	}
	r.mu.Lock()
	r.sizes[s.obj.Name] = want
	r.mu.Unlock()
	if s.frontend == frontendFUSE {
		if err := fuse.RefreshLoopCapacity(s.endpoint, r.Agent.volumeFile(s.obj.Name)); err != nil {
			return ctrl.Result{}, err
		}
	}
	s.status.Size = want
	log.FromContext(ctx).Info("Volume grown online", "size", want)
	r.Agent.recorder.Eventf(s.obj, nil, corev1.EventTypeNormal, "Grown", "Grow", "volume grown to %s online", s.obj.Spec.Size.String())
	return ctrl.Result{}, nil
}

// reconcileMembers adds replicas listed in spec but not in the engine and
// removes those the engine has but spec no longer lists.
func (r *EngineReconciler) reconcileMembers(ctx context.Context, s *engineScope) (ctrl.Result, error) {
	add, remove := memberChanges(s.obj.Spec.Replicas, s.status)
	if len(add)+len(remove) == 0 {
		return ctrl.Result{}, nil
	}
	cl, err := r.control(s.obj.Name, s.tokenFile)
	if err != nil {
		return ctrl.Result{}, err
	}
	var errs []error
	for _, addr := range add {
		if _, err := cl.AddReplica(ctx, addr, false); err != nil && !errors.Is(err, engine.ErrBusy) {
			errs = append(errs, fmt.Errorf("add replica %s: %w", addr, err))
		}
		s.pending = append(s.pending, "add "+addr)
	}
	for _, addr := range remove {
		if err := cl.RemoveReplica(ctx, addr); err != nil && !errors.Is(err, engine.ErrNotFound) {
			errs = append(errs, fmt.Errorf("remove replica %s: %w", addr, err))
		}
		s.pending = append(s.pending, "remove "+addr)
	}
	if err := errors.Join(errs...); err != nil {
		// The engine serves on; the change is retried (e.g. it refuses to
		// drop its last healthy replica until another one is rebuilt).
		s.memberErr = err
		return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
	}
	log.FromContext(ctx).Info("Engine membership changed", "added", add, "removed", remove)
	return ctrl.Result{RequeueAfter: time.Second}, nil
}

// memberChanges compares spec.replicas with the engine's members.
func memberChanges(want []string, st *engine.Status) (add, remove []string) {
	have := map[string]bool{}
	for _, m := range st.Replicas {
		have[m.Address] = true
	}
	wanted := map[string]bool{}
	for _, a := range want {
		wanted[a] = true
		if !have[a] {
			add = append(add, a)
		}
	}
	for _, m := range st.Replicas {
		if !wanted[m.Address] {
			remove = append(remove, m.Address)
		}
	}
	return add, remove
}

// control returns the cached control client of vol.
func (r *EngineReconciler) control(vol, tokenFile string) (*control.Client, error) {
	return r.Agent.controls.get(r.Agent.controlAddr(vol), vol, tokenFile)
}

// reconcileDelete tears the engine down, then releases the finalizer.
func (r *EngineReconciler) reconcileDelete(ctx context.Context, obj *cairnv1.Engine) error {
	if !controllerutil.ContainsFinalizer(obj, EngineFinalizer) {
		return nil
	}
	if err := r.teardown(ctx, obj.Name); err != nil {
		return err
	}
	if err := r.Agent.removeTokenIfUnused(ctx, r.Client, obj.Name); err != nil {
		return err
	}
	log.FromContext(ctx).Info("Engine stopped and volume detached")
	r.Agent.recorder.Eventf(obj, nil, corev1.EventTypeNormal, "Detached", "Detach", "engine flushed and stopped; block device and mount removed")
	patch := client.MergeFrom(obj.DeepCopy())
	controllerutil.RemoveFinalizer(obj, EngineFinalizer)
	return client.IgnoreNotFound(r.Patch(ctx, obj, patch))
}

// teardown detaches the block device, stops the engine (SIGTERM: it
// flushes its replicas and unmounts), and removes what is left: a stale
// mount, sockets, the mount directory.
func (r *EngineReconciler) teardown(ctx context.Context, vol string) error {
	if err := r.Agent.detachFrontend(ctx, vol); err != nil {
		return err
	}
	if err := r.Agent.sup.Stop(ctx, enginePrefix+vol); err != nil {
		return err
	}
	if err := r.Agent.clearVolume(ctx, vol); err != nil {
		return err
	}
	r.Agent.controls.forget(vol)
	r.mu.Lock()
	delete(r.sizes, vol)
	r.mu.Unlock()
	for _, p := range []string{r.Agent.mountpoint(vol), trimUnix(r.Agent.controlAddr(vol)), trimUnix(r.Agent.nbdAddr(vol))} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// trimUnix returns the socket path of a "unix:PATH" address.
func trimUnix(addr string) string { _, path := netx.SplitAddr(addr); return path }
