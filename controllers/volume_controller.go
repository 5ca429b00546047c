package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/phases"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/policies"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumes,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumes/finalizers,verbs=update
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=replicas,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=engines,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumepolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backuptargets,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=snapshots,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backups,verbs=get;list;watch
// +kubebuilder:rbac:groups=core,resources=secrets,verbs=get;list;watch;create,namespace=cairn-system

// replicaNodeIndex indexes Replicas by spec.nodeID.
const replicaNodeIndex = "spec.nodeID"

// VolumeReconciler turns a Volume into Replica objects placed by its
// effective policy, a token Secret, and an Engine on spec.nodeID while it is
// attached; it replaces replicas lost past the replenish wait and reports
// what the engine and the node agents see.
type VolumeReconciler struct {
	client.Client
	Recorder recorder.EventRecorder
	Now      func() time.Time
	// Stores opens the BackupTargets a fromBackup volume restores from
	// (shared with the BackupTarget controller; default a private cache).
	Stores *targets.Cache
}

// volumeScope is what one reconcile of a volume works with.
type volumeScope struct {
	vol      *v1.Volume
	eff      policies.Effective
	replicas []v1.Replica
	nodes    map[string]*v1.CairnNode
	engine   *v1.Engine
	// snapshots are the volume's Snapshot objects; work says whether a
	// snapshot or backup needs the engine.
	snapshots []v1.Snapshot
	work      bool
	// out is the outcome the phases arrived at so far.
	out outcome
	// lostUntil is the earliest time a not-ready replica becomes lost.
	lostUntil time.Time
}

func (s *volumeScope) isStalled() bool { return s.out.stalled }

// Reconcile follows the controller skeleton: get, finalizer, deferred status
// patch, deletion or phases.
func (r *VolumeReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	vol := &v1.Volume{}
	if err := r.Get(ctx, req.NamespacedName, vol); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if vol.DeletionTimestamp.IsZero() && !controllerutil.ContainsFinalizer(vol, v1.FinalizerVolume) {
		patch := client.MergeFrom(vol.DeepCopy())
		controllerutil.AddFinalizer(vol, v1.FinalizerVolume)
		return ctrl.Result{}, r.Patch(ctx, vol, patch)
	}
	s := &volumeScope{vol: vol}
	orig := vol.DeepCopy()
	defer func() {
		if s.vol.DeletionTimestamp.IsZero() {
			s.finishStatus(err)
			r.recordChanges(ctx, orig, vol)
		}
		if perr := r.Status().Patch(ctx, vol, client.MergeFrom(orig)); perr != nil && !apierrors.IsNotFound(perr) {
			err = errors.Join(err, perr)
		}
	}()
	if !vol.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, s)
	}
	return phases.Run(ctx, s, (*volumeScope).isStalled, r.resolvePolicy, r.loadState, r.loadWork, r.ensureToken, r.loadCopies, r.followStandby, r.resolveRestore, r.resolveCopy, r.ensureReplicas, r.ensureEngine, r.observe)
}

// recordChanges emits an event and a log line when the volume's robustness
// or state changes: what an operator watching it cares about.
func (r *VolumeReconciler) recordChanges(ctx context.Context, before, after *v1.Volume) {
	b, a := before.Status, after.Status
	if a.Robustness != b.Robustness && a.Robustness != "" {
		kind := corev1.EventTypeNormal
		if a.Robustness != v1.RobustnessHealthy {
			kind = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(after, nil, kind, "Robustness"+strings.ToUpper(string(a.Robustness[:1]))+string(a.Robustness[1:]), "Observe",
			"volume is %s: %d of %d replicas healthy", a.Robustness, countHealthy(a.Replicas), len(a.Replicas))
		log.FromContext(ctx).Info("Volume robustness changed", "from", b.Robustness, "to", a.Robustness)
	}
	if a.State != b.State && a.State != "" {
		r.Recorder.Eventf(after, nil, corev1.EventTypeNormal, string(a.State), "Observe", "volume is %s%s", a.State, onNode(a.AttachedNode))
		log.FromContext(ctx).Info("Volume state changed", "from", b.State, "to", a.State, "node", a.AttachedNode)
	}
}

func onNode(node string) string {
	if node == "" {
		return ""
	}
	return " on " + node
}

// resolvePolicy computes the effective policy. A policyRef to a missing
// policy stalls a new volume; a volume whose policy was deleted keeps its
// replicas and says so.
func (r *VolumeReconciler) resolvePolicy(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	var list v1.VolumePolicyList
	if err := r.List(ctx, &list); err != nil {
		return ctrl.Result{}, err
	}
	eff, err := policies.EffectivePolicy(s.vol, list.Items)
	st := &s.vol.Status
	missing := lastPolicyDeleted(s.vol, eff, err, list.Items)
	switch {
	case missing:
		eff = policies.Effective{Policy: st.EffectivePolicy, Source: policies.FromPolicyRef, Replicas: -1, Spread: v1.SpreadNode, ReplenishWait: policies.DefaultReplenishWait}
	case err != nil:
		s.out = outcome{stalled: true, reason: "PolicyNotFound", message: err.Error()}
		return ctrl.Result{}, reconcile.TerminalError(err)
	}
	setFlag(&st.Conditions, "PolicyDeleted", missing, "PolicyDeleted",
		fmt.Sprintf("policy %s was deleted; the volume keeps its replicas and last placement", st.EffectivePolicy), s.vol.Generation)
	setFlag(&st.Conditions, "PolicyConflict", len(eff.Tied) > 1, "EqualPriority",
		fmt.Sprintf("policies %v select this volume with equal priority; %s wins by name", eff.Tied, eff.Policy), s.vol.Generation)
	s.eff = eff
	st.EffectivePolicy = eff.Policy
	return ctrl.Result{}, nil
}

// lastPolicyDeleted reports whether the policy the volume last ran under is
// gone and nothing else took its place: its policyRef names it, or no
// other policy's selector matches.
func lastPolicyDeleted(vol *v1.Volume, eff policies.Effective, err error, all []v1.VolumePolicy) bool {
	last := vol.Status.EffectivePolicy
	if last == "" || slices.ContainsFunc(all, func(p v1.VolumePolicy) bool { return p.Name == last }) {
		return false
	}
	if errors.Is(err, policies.ErrPolicyNotFound) {
		return string(vol.Spec.PolicyRef) == last
	}
	return err == nil && eff.Source == policies.FromNone
}

// loadState reads the volume's replicas, engine and the nodes.
func (r *VolumeReconciler) loadState(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	var reps v1.ReplicaList
	if err := r.List(ctx, &reps, client.MatchingLabels{v1.LabelVolume: s.vol.Name}); err != nil {
		return ctrl.Result{}, err
	}
	s.replicas = reps.Items
	var nodes v1.CairnNodeList
	if err := r.List(ctx, &nodes); err != nil {
		return ctrl.Result{}, err
	}
	s.nodes = map[string]*v1.CairnNode{}
	for i := range nodes.Items {
		s.nodes[nodes.Items[i].Name] = &nodes.Items[i]
	}
	eng := &v1.Engine{}
	err := r.Get(ctx, types.NamespacedName{Name: s.vol.Name}, eng)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return ctrl.Result{}, err
	default:
		s.engine = eng
	}
	if s.eff.Replicas < 0 { // policy deleted: keep the count it left
		s.eff.Replicas = int32(max(1, len(s.replicas)))
	}
	return ctrl.Result{}, nil
}

// SetupWithManager watches Volumes, what they own, and the policies and
// node readiness they depend on.
func (r *VolumeReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Stores == nil {
		r.Stores = &targets.Cache{}
	}
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(context.Background(), &v1.Replica{}, replicaNodeIndex, func(o client.Object) []string {
		return []string{o.(*v1.Replica).Spec.NodeID}
	}); err != nil {
		return err
	}
	if err := idx.IndexField(context.Background(), &v1.Snapshot{}, volumeNameIndex, func(o client.Object) []string {
		return []string{o.(*v1.Snapshot).Spec.VolumeName}
	}); err != nil {
		return err
	}
	if err := idx.IndexField(context.Background(), &v1.Backup{}, volumeNameIndex, func(o client.Object) []string {
		return []string{o.(*v1.Backup).Spec.VolumeName}
	}); err != nil {
		return err
	}
	if err := indexCopies(context.Background(), idx); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.Volume{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Owns(&v1.Replica{}).
		Owns(&v1.Engine{}).
		Owns(&corev1.Secret{}).
		Watches(&v1.VolumePolicy{}, handler.EnqueueRequestsFromMapFunc(r.allVolumes)).
		Watches(&v1.Snapshot{}, handler.EnqueueRequestsFromMapFunc(volumeOfWork)).
		Watches(&v1.Snapshot{}, handler.EnqueueRequestsFromMapFunc(r.copiesOfSnapshot)).
		Watches(&v1.Volume{}, handler.EnqueueRequestsFromMapFunc(copySourceOf)).
		Watches(&v1.Backup{}, handler.EnqueueRequestsFromMapFunc(volumeOfWork)).
		Watches(&v1.CairnNode{}, handler.EnqueueRequestsFromMapFunc(r.volumesOnNode), builder.WithPredicates(placementChanged())).
		Complete(r)
}

// allVolumes enqueues every volume: a policy change may move any of them.
func (r *VolumeReconciler) allVolumes(ctx context.Context, _ client.Object) []reconcile.Request {
	var list v1.VolumeList
	if err := r.List(ctx, &list); err != nil {
		log.FromContext(ctx).Error(err, "List volumes for a policy change")
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, v := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: v.Name}})
	}
	return out
}

// volumesOnNode enqueues the volumes with a replica on the node, and every
// volume short of replicas when a node becomes ready (it may take them).
func (r *VolumeReconciler) volumesOnNode(ctx context.Context, o client.Object) []reconcile.Request {
	if ready, _ := nodeReady(o.(*v1.CairnNode)); ready {
		return r.allVolumes(ctx, o)
	}
	var reps v1.ReplicaList
	if err := r.List(ctx, &reps, client.MatchingFields{replicaNodeIndex: o.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "List replicas of a node")
		return nil
	}
	seen := map[string]bool{}
	var out []reconcile.Request
	for _, rep := range reps.Items {
		if !seen[rep.Spec.VolumeName] {
			seen[rep.Spec.VolumeName] = true
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: rep.Spec.VolumeName}})
		}
	}
	return out
}

// placementChanged passes CairnNode events that change where replicas
// may be: readiness, labels, zone, allowScheduling, evictionRequested
// (heartbeats and disk reports alone do not move volumes).
func placementChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		a, b := e.ObjectOld.(*v1.CairnNode), e.ObjectNew.(*v1.CairnNode)
		readyA, _ := nodeReady(a)
		readyB, _ := nodeReady(b)
		return readyA != readyB || a.Status.Zone != b.Status.Zone || !maps.Equal(a.Labels, b.Labels) ||
			a.Spec.EvictionRequested != b.Spec.EvictionRequested || !ptr.Equal(a.Spec.AllowScheduling, b.Spec.AllowScheduling)
	}}
}
