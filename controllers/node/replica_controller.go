package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
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
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=replicas,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=replicas/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=replicas/finalizers,verbs=update
// +kubebuilder:rbac:groups=core,resources=secrets,verbs=get,namespace=cairn-system

// startingPoll is how often a starting child is checked for readiness.
const startingPoll = 500 * time.Millisecond

// ReplicaReconciler runs the replicas assigned to its node as `cairn
// replica` children while their volume has an Engine, and deletes a
// replica's data when its Replica object is deleted.
type ReplicaReconciler struct {
	client.Client
	// APIReader reads token Secrets without caching them.
	APIReader client.Reader
	Agent     *Agent
}

// replicaScope is what one reconcile of a Replica observes.
type replicaScope struct {
	obj     *cairnv1.Replica
	address string
	port    int
	size    int64 // bytes the replica was created with
	attach  bool  // an Engine of the volume exists
	proc    ProcState
	running bool // supervised
	serving bool // the address accepts connections
	// restoring: a restore from spec.restore runs, restorePercent done.
	restoring      bool
	restorePercent int32
	// restored is the backup the replica was filled from.
	restored string
	// copying: a copy from spec.copyFrom runs (restorePercent done);
	// copied is its VOLUME/SNAPSHOT once the replica holds it.
	copying bool
	copied  string
	// lastRestore is an incremental update completed in this reconcile.
	lastRestore *cairnv1.ReplicaRestoreResult
	err         error
}

// SetupWithManager watches the node's Replicas, Engines of any node (a
// replica runs while its volume has one) and the supervisor's child events.
func (r *ReplicaReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool {
		rep, ok := o.(*cairnv1.Replica)
		return ok && rep.Spec.NodeID == r.Agent.opts.Name
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("node-replica").
		For(&cairnv1.Replica{}, builder.WithPredicates(mine)).
		Watches(&cairnv1.Engine{}, handler.EnqueueRequestsFromMapFunc(r.replicasOfEngine)).
		WatchesRawSource(source.Channel(r.Agent.replicaC, &handler.EnqueueRequestForObject{})).
		WithOptions(opts).
		Complete(r)
}

// replicasOfEngine maps an Engine to this node's replicas of its volume
// and those waiting to copy from it.
func (r *ReplicaReconciler) replicasOfEngine(ctx context.Context, o client.Object) []reconcile.Request {
	eng, ok := o.(*cairnv1.Engine)
	if !ok {
		return nil
	}
	var list cairnv1.ReplicaList
	if err := r.List(ctx, &list); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, rep := range list.Items {
		copies := rep.Spec.CopyFrom != nil && rep.Spec.CopyFrom.Volume == eng.Spec.VolumeName
		if (rep.Spec.VolumeName == eng.Spec.VolumeName || copies) && rep.Spec.NodeID == r.Agent.opts.Name {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&rep)})
		}
	}
	return out
}

// Reconcile follows the controller skeleton: get, deletion, finalizer,
// deferred status patch, phases.
func (r *ReplicaReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	obj := &cairnv1.Replica{}
	if err := r.Get(ctx, req.NamespacedName, obj); err != nil {
		if apierrors.IsNotFound(err) {
			// Gone without our finalizer: the manager released it while
			// this node was unreachable. The object is deleted, so its data
			// goes too.
			if err := r.Agent.sup.Stop(ctx, replicaPrefix+req.Name); err != nil {
				return ctrl.Result{}, err
			}
			return ctrl.Result{}, r.Agent.removeReplicaData(ctx, req.Name)
		}
		return ctrl.Result{}, err
	}
	if obj.Spec.NodeID != r.Agent.opts.Name {
		return ctrl.Result{}, nil
	}
	ctx = log.IntoContext(ctx, log.FromContext(ctx).WithValues("replica", klog.KObj(obj), "volume", obj.Spec.VolumeName))
	if !obj.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, obj)
	}
	if !controllerutil.ContainsFinalizer(obj, ReplicaFinalizer) {
		patch := client.MergeFrom(obj.DeepCopy())
		controllerutil.AddFinalizer(obj, ReplicaFinalizer)
		return ctrl.Result{}, r.Patch(ctx, obj, patch)
	}
	p := newStatusPatcher(r.Client, obj)
	before := obj.Status
	defer func() {
		replicaEvents(r.Agent.recorder, obj, before)
		if err := p.patch(ctx, obj); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()
	return r.reconcile(ctx, &replicaScope{obj: obj})
}

// reconcile runs the phases, then derives the status from what they saw.
func (r *ReplicaReconciler) reconcile(ctx context.Context, s *replicaScope) (ctrl.Result, error) {
	phases := []func(context.Context, *replicaScope) (ctrl.Result, error){
		r.reconcileAddress,
		r.reconcileRestore,
		r.reconcileCopy,
		r.reconcileAttachment,
		r.reconcileProcess,
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
	res = mergeResult(res, setReplicaStatus(s))
	return outcome(res, err)
}

// reconcileAddress checks the disk and picks the replica's port once.
func (r *ReplicaReconciler) reconcileAddress(_ context.Context, s *replicaScope) (ctrl.Result, error) {
	if d := s.obj.Spec.DiskPath; d != "" && d != r.Agent.opts.DataDir {
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("diskPath %q is not a disk of node %s (its data directory is %s)", d, r.Agent.opts.Name, r.Agent.opts.DataDir))
	}
	if s.obj.Spec.Size.Value() <= 0 {
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("size %s is not positive", s.obj.Spec.Size.String()))
	}
	st, err := r.Agent.loadReplicaState(s.obj.Name, s.obj.Spec.Size.Value())
	if err != nil {
		return ctrl.Result{}, err
	}
	s.address, s.port = net.JoinHostPort(r.Agent.opts.Address, strconv.Itoa(st.Port)), st.Port
	s.size = st.Size
	return ctrl.Result{}, nil
}

// reconcileAttachment decides whether the replica should run: only while
// an Engine object of its volume exists (a detached volume keeps no
// processes running).
func (r *ReplicaReconciler) reconcileAttachment(ctx context.Context, s *replicaScope) (ctrl.Result, error) {
	var eng cairnv1.Engine
	err := r.Get(ctx, client.ObjectKey{Name: s.obj.Spec.VolumeName}, &eng)
	switch {
	case apierrors.IsNotFound(err):
		s.attach = false
	case err != nil:
		return ctrl.Result{}, err
	default:
		s.attach = eng.Spec.VolumeName == s.obj.Spec.VolumeName
	}
	return ctrl.Result{}, nil
}

// reconcileProcess starts or stops the child to match the attachment.
func (r *ReplicaReconciler) reconcileProcess(ctx context.Context, s *replicaScope) (ctrl.Result, error) {
	key := replicaPrefix + s.obj.Name
	if !s.attach {
		if _, ok := r.Agent.sup.State(key); ok {
			log.FromContext(ctx).Info("Stopping replica: its volume is detached")
		}
		if err := r.Agent.sup.Stop(ctx, key); err != nil {
			return ctrl.Result{}, err
		}
		// Keep the port the address names until the replica runs again.
		if err := r.Agent.ports.hold(s.port); err != nil {
			log.FromContext(ctx).Info("Replica port is taken while the replica is stopped", "port", s.port, "err", err.Error())
		}
		return ctrl.Result{}, nil
	}
	tokenFile, err := r.Agent.ensureTokenFile(ctx, r.APIReader, s.obj.Spec.VolumeName)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := os.MkdirAll(r.Agent.replicaDir(s.obj.Name), 0o700); err != nil {
		return ctrl.Result{}, err
	}
	args := []string{"replica",
		"--volume", s.obj.Spec.VolumeName,
		"--replica", s.obj.Name,
		"--dir", r.Agent.replicaDir(s.obj.Name),
		"--size", strconv.FormatInt(s.size, 10),
		"--listen", s.address,
		"--token-file", tokenFile,
	}
	args = append(args, r.Agent.tlsArgs()...)
	r.Agent.ports.release(s.port)
	s.proc = r.Agent.sup.Ensure(key, Child{Args: args, Mark: replicaMark(s.obj.Name)})
	s.running = true
	s.serving = s.proc.Running && reachable(ctx, s.address)
	return ctrl.Result{}, nil
}

// reconcileDelete stops the child, deletes the replica's data and port,
// then releases the finalizer.
func (r *ReplicaReconciler) reconcileDelete(ctx context.Context, obj *cairnv1.Replica) error {
	if !controllerutil.ContainsFinalizer(obj, ReplicaFinalizer) {
		return nil
	}
	if err := r.Agent.sup.Stop(ctx, replicaPrefix+obj.Name); err != nil {
		return err
	}
	if err := r.Agent.removeReplicaData(ctx, obj.Name); err != nil {
		return err
	}
	if err := r.Agent.removeTokenIfUnused(ctx, r.Client, obj.Spec.VolumeName); err != nil {
		return err
	}
	log.FromContext(ctx).Info("Replica data deleted")
	r.Agent.recorder.Eventf(obj, nil, corev1.EventTypeNormal, "DataDeleted", "Delete", "replica data deleted from node %s", r.Agent.opts.Name)
	patch := client.MergeFrom(obj.DeepCopy())
	controllerutil.RemoveFinalizer(obj, ReplicaFinalizer)
	return client.IgnoreNotFound(r.Patch(ctx, obj, patch))
}

// outcome turns a phase error into the reconcile result: a terminal
// (user-fixable) error is returned once, without retry, and shows as
// Stalled; a missing token is waited for gently; anything else is retried
// with backoff.
func outcome(res ctrl.Result, err error) (ctrl.Result, error) {
	switch {
	case err == nil:
		return res, nil
	case errors.Is(err, reconcile.TerminalError(nil)):
		return ctrl.Result{}, err
	case errors.Is(err, errNoToken):
		return mergeResult(res, ctrl.Result{RequeueAfter: 5 * time.Second}), nil
	case errors.Is(err, errRestoreWaiting):
		return mergeResult(res, ctrl.Result{RequeueAfter: 15 * time.Second}), nil
	case errors.Is(err, errCopyWaiting):
		// The source's Engine watch requeues sooner.
		return mergeResult(res, ctrl.Result{RequeueAfter: 15 * time.Second}), nil
	}
	return ctrl.Result{}, err
}

// mergeResult keeps the sooner of two requeues.
func mergeResult(a, b ctrl.Result) ctrl.Result {
	switch {
	case a.RequeueAfter == 0:
		return b
	case b.RequeueAfter == 0:
		return a
	case b.RequeueAfter < a.RequeueAfter:
		return b
	}
	return a
}
