package controllers

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
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

// Setup registers every reconciler with the manager. Reconcilers arrive with
// the issues that build them; the manager already serves webhooks, metrics
// and probes.
func Setup(mgr ctrl.Manager) error {
	_ = mgr
	return nil
}
