package controllers

import (
	"context"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=cairnnodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=cairnnodes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch,namespace=cairn-system

// CairnNodeReconciler marks a node whose agent stopped renewing its
// heartbeat Lease (cairn-node-NAME in cairn-system) not Ready. The agent
// itself sets Ready (with its disks and zone) on every heartbeat; a dead
// agent cannot say it is gone, so this reconciler does, at the Lease's
// expiry. Volumes react to the condition.
type CairnNodeReconciler struct {
	client.Client
	// Now is the clock; tests may set it.
	Now func() time.Time
}

// Reconcile sets the node's Ready condition from its Lease and requeues at
// the Lease's expiry.
func (r *CairnNodeReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	node := &v1.CairnNode{}
	if err := r.Get(ctx, req.NamespacedName, node); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	lease := &coordinationv1.Lease{}
	err := r.Get(ctx, types.NamespacedName{Namespace: v1.SystemNamespace, Name: v1.NodeLeasePrefix + node.Name}, lease)
	if client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, err
	}
	if err != nil {
		lease = nil
	}
	cond, expires := heartbeatCondition(lease, r.Now())
	alive := cond.Status == metav1.ConditionTrue
	recordNode(node.Name, alive)
	if alive {
		return ctrl.Result{RequeueAfter: expires.Sub(r.Now()) + time.Second}, nil
	}
	cond.ObservedGeneration = node.Generation
	orig := node.DeepCopy()
	if meta.SetStatusCondition(&node.Status.Conditions, cond) {
		meta.RemoveStatusCondition(&node.Status.Conditions, v1.ConditionReconciling)
		if err := r.Status().Patch(ctx, node, client.MergeFrom(orig)); err != nil {
			return ctrl.Result{}, err
		}
		log.FromContext(ctx).Info("Node lost its heartbeat", "reason", cond.Reason, "message", cond.Message)
	}
	return ctrl.Result{}, nil
}

// heartbeatCondition is the Ready condition a Lease implies at now, and when
// it expires (zero once expired or absent).
func heartbeatCondition(lease *coordinationv1.Lease, now time.Time) (metav1.Condition, time.Time) {
	c := metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionFalse}
	if lease == nil || lease.Spec.RenewTime == nil || lease.Spec.LeaseDurationSeconds == nil {
		c.Reason, c.Message = "NoHeartbeat", "the node agent has not started its heartbeat"
		return c, time.Time{}
	}
	expires := lease.Spec.RenewTime.Add(time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second)
	if !now.Before(expires) {
		c.Reason = "HeartbeatExpired"
		c.Message = "no heartbeat from the node agent since " + lease.Spec.RenewTime.UTC().Format(time.RFC3339)
		return c, time.Time{}
	}
	c.Status, c.Reason, c.Message = metav1.ConditionTrue, "Heartbeat", "the node agent renews its heartbeat"
	return c, expires
}

// nodeReady reports whether a CairnNode's Ready condition is True, and since
// when it has not been.
func nodeReady(n *v1.CairnNode) (bool, time.Time) {
	c := meta.FindStatusCondition(n.Status.Conditions, v1.ConditionReady)
	if c == nil {
		return false, n.CreationTimestamp.Time
	}
	return c.Status == metav1.ConditionTrue, c.LastTransitionTime.Time
}

// SetupWithManager watches CairnNodes and their heartbeat Leases.
func (r *CairnNodeReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Now == nil {
		r.Now = time.Now
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.CairnNode{}).
		Watches(&coordinationv1.Lease{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			name, ok := strings.CutPrefix(o.GetName(), v1.NodeLeasePrefix)
			if !ok || o.GetNamespace() != v1.SystemNamespace {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: name}}}
		})).
		Complete(r)
}
