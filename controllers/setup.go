package controllers

import (
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/dr"
	"github.com/cairnstore/cairn/controllers/scheduler"
	"github.com/cairnstore/cairn/controllers/targets"
)

// The manager elects a leader through a Lease and records events; the
// reconcilers add their own permissions next to their code.
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete,namespace=cairn-system
// +kubebuilder:rbac:groups=core,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// NewScheme returns a scheme with the Kubernetes built-in kinds and Cairn's.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(cairnv1.AddToScheme(s))
	return s
}

// CacheOptions limits the manager's cache of Secrets and Leases to
// cairn-system, the only namespace its RBAC lets it read them in.
func CacheOptions() cache.Options {
	sys := map[string]cache.Config{cairnv1.SystemNamespace: {}}
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Secret{}:        {Namespaces: sys},
		&coordinationv1.Lease{}: {Namespaces: sys},
	}}
}

// Options select what Setup registers.
type Options struct {
	// NoScheduler leaves the RecurringSnapshot scheduler out: an end-to-end
	// test runs its own with an injected clock.
	NoScheduler bool
}

// Setup registers every reconciler with the manager.
func Setup(mgr ctrl.Manager, opts ...Options) error {
	var o Options
	for _, x := range opts {
		o = x
	}
	c := mgr.GetClient()
	stores := &targets.Cache{}
	rs := []interface{ SetupWithManager(ctrl.Manager) error }{
		&CairnNodeReconciler{Client: c},
		&VolumeReconciler{Client: c, Recorder: mgr.GetEventRecorder("cairn-volume"), Stores: stores},
		&VolumePolicyReconciler{Client: c},
		&BackupTargetReconciler{Client: c, Recorder: mgr.GetEventRecorder("cairn-backuptarget"), Stores: stores},
		&BackupReconciler{Client: c, Recorder: mgr.GetEventRecorder("cairn-backup"), Stores: stores},
		&dr.Reconciler{Client: c, Recorder: mgr.GetEventRecorder("cairn-dr"), Stores: stores},
	}
	if !o.NoScheduler {
		rs = append(rs, &scheduler.Reconciler{Client: c, Recorder: mgr.GetEventRecorder("cairn-scheduler"), Stores: stores})
	}
	for _, r := range rs {
		if err := r.SetupWithManager(mgr); err != nil {
			return err
		}
	}
	return nil
}
