package dr

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=disasterrecoveryvolumes,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=disasterrecoveryvolumes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=disasterrecoveryvolumes/finalizers,verbs=update
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumes,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumepolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backuptargets,verbs=get;list;watch
// +kubebuilder:rbac:groups=core,resources=secrets,verbs=get,namespace=cairn-system
// +kubebuilder:rbac:groups=core,resources=persistentvolumes,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=core,resources=persistentvolumeclaims,verbs=get;list;watch;create

// Labels and annotations on the standby Volume (created by this
// controller, never on users' objects).
const (
	// LabelNamespace and LabelName name the DisasterRecoveryVolume a
	// Volume belongs to (a cluster-scoped Volume cannot be owned by it).
	LabelNamespace = "storage.cairn.dev/dr-namespace"
	LabelName      = "storage.cairn.dev/dr-name"
	// AnnotationBackupCreated is the source creation time (RFC 3339) of
	// the backup named in the Volume's spec.fromBackup.backup.
	AnnotationBackupCreated = "storage.cairn.dev/dr-backup-created"
	// AnnotationActivateBackup is the backup activation chose.
	AnnotationActivateBackup = "storage.cairn.dev/dr-activate-backup"
	// AnnotationSkipped lists the newer backups activation found
	// unreadable (comma separated).
	AnnotationSkipped = "storage.cairn.dev/dr-skipped-backups"
	// AnnotationFenced is "true" when the backup activation chose was
	// taken while the source was fenced (v1.LabelFenced in the target).
	AnnotationFenced = "storage.cairn.dev/dr-fenced"
	// Finalizer lets deletion remove a standby Volume.
	Finalizer = "storage.cairn.dev/dr-volume"
	// ConditionBackupSkipped is True when activation used an older backup
	// than the newest because the newer ones could not be read.
	ConditionBackupSkipped = "BackupSkipped"
)

// defaultPoll is the poll interval when the spec has none.
const defaultPoll = 30 * time.Second

// applyPoll is how often a standby applying a backup is looked at besides
// the Volume watch.
const applyPoll = 5 * time.Second

// Reconciler reconciles DisasterRecoveryVolumes.
type Reconciler struct {
	client.Client
	Recorder events.EventRecorder
	Stores   *targets.Cache
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// scope is what one reconcile works on.
type scope struct {
	drv *v1.DisasterRecoveryVolume
	vol *v1.Volume // nil until created
	out outcome
}

// SetupWithManager watches DR volumes and their Volumes, PVs and PVCs.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Now == nil {
		r.Now = time.Now
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("disasterrecoveryvolume").
		For(&v1.DisasterRecoveryVolume{}).
		Watches(&v1.Volume{}, handler.EnqueueRequestsFromMapFunc(ownerOf)).
		Watches(&corev1.PersistentVolumeClaim{}, handler.EnqueueRequestsFromMapFunc(r.drvsOfClaim)).
		Complete(r)
}

// ownerOf maps a standby Volume to its DR volume.
func ownerOf(_ context.Context, o client.Object) []reconcile.Request {
	ns, name := o.GetLabels()[LabelNamespace], o.GetLabels()[LabelName]
	if ns == "" || name == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: ns, Name: name}}}
}

// drvsOfClaim maps a PVC to the DR volumes of its namespace that claim it.
func (r *Reconciler) drvsOfClaim(ctx context.Context, o client.Object) []reconcile.Request {
	var list v1.DisasterRecoveryVolumeList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, d := range list.Items {
		if d.Spec.Claim.Name == o.GetName() {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&d)})
		}
	}
	return out
}

// VolumeName is the standby Volume of a DR volume: "dr-" and 20 hex digits
// of SHA-256(namespace/name), short enough for the node agents' socket
// paths and unique across namespaces.
func VolumeName(namespace, name string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	return "dr-" + hex.EncodeToString(sum[:10])
}

// Reconcile follows the skeleton: get, finalizer, deferred status patch,
// deletion or phases.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	drv := &v1.DisasterRecoveryVolume{}
	if err := r.Get(ctx, req.NamespacedName, drv); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	ctx = log.IntoContext(ctx, log.FromContext(ctx).WithValues("drv", klog.KObj(drv)))
	if drv.DeletionTimestamp.IsZero() && !controllerutil.ContainsFinalizer(drv, Finalizer) {
		patch := client.MergeFrom(drv.DeepCopy())
		controllerutil.AddFinalizer(drv, Finalizer)
		return ctrl.Result{}, r.Patch(ctx, drv, patch)
	}
	if !drv.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, drv)
	}
	s := &scope{drv: drv}
	orig := drv.DeepCopy()
	defer func() {
		r.finishStatus(s, err)
		if perr := r.Status().Patch(ctx, drv, client.MergeFrom(orig)); perr != nil && !apierrors.IsNotFound(perr) {
			err = errors.Join(err, perr)
		}
	}()
	phases := []func(context.Context, *scope) (ctrl.Result, error){r.ensureVolume, r.follow, r.activate, r.bindClaim}
	for _, p := range phases {
		res, err = p(ctx, s)
		if err != nil || !res.IsZero() || s.out.stalled {
			break
		}
	}
	if errors.Is(err, reconcile.TerminalError(nil)) {
		return ctrl.Result{}, err
	}
	if err == nil && res.IsZero() && !drv.Spec.Activate {
		res.RequeueAfter = r.pollInterval(drv)
	}
	return res, err
}

func (r *Reconciler) pollInterval(drv *v1.DisasterRecoveryVolume) time.Duration {
	if drv.Spec.PollInterval != nil && drv.Spec.PollInterval.Duration > 0 {
		return drv.Spec.PollInterval.Duration
	}
	return defaultPoll
}

// reconcileDelete removes the standby Volume unless it was activated, then
// the finalizer.
func (r *Reconciler) reconcileDelete(ctx context.Context, drv *v1.DisasterRecoveryVolume) error {
	vol := &v1.Volume{}
	err := r.Get(ctx, client.ObjectKey{Name: VolumeName(drv.Namespace, drv.Name)}, vol)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return err
	case vol.Spec.Standby && vol.DeletionTimestamp.IsZero():
		log.FromContext(ctx).Info("Deleting the standby volume of a deleted DisasterRecoveryVolume", "volume", vol.Name)
		if err := r.Delete(ctx, vol); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	lag.set(drv.Namespace, drv.Name, time.Time{})
	patch := client.MergeFrom(drv.DeepCopy())
	controllerutil.RemoveFinalizer(drv, Finalizer)
	return r.Patch(ctx, drv, patch)
}
