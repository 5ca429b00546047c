package webhook

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/policies"
)

// Setup registers Cairn's validating webhooks with the manager's webhook server.
func Setup(mgr ctrl.Manager) error {
	if err := ctrl.NewWebhookManagedBy(mgr, &cairnv1.RecurringSnapshot{}).
		WithValidator(RecurringSnapshotValidator{}).Complete(); err != nil {
		return fmt.Errorf("recurringsnapshot webhook: %w", err)
	}
	if err := ctrl.NewWebhookManagedBy(mgr, &cairnv1.VolumePolicy{}).
		WithValidator(VolumePolicyValidator{}).Complete(); err != nil {
		return fmt.Errorf("volumepolicy webhook: %w", err)
	}
	return nil
}

// invalid turns field errors into the API error the API server shows users.
func invalid(kind, name string, errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	return apierrors.NewInvalid(schema.GroupKind{Group: cairnv1.GroupVersion.Group, Kind: kind}, name, errs)
}

// +kubebuilder:webhook:path=/validate-storage-cairn-dev-v1alpha1-recurringsnapshot,mutating=false,failurePolicy=fail,sideEffects=None,groups=storage.cairn.dev,resources=recurringsnapshots,verbs=create;update,versions=v1alpha1,name=vrecurringsnapshot.cairn.dev,admissionReviewVersions=v1

// RecurringSnapshotValidator checks cron semantics, the time zone, jitter
// against the schedule's period, and the selector.
type RecurringSnapshotValidator struct{}

var _ admission.Validator[*cairnv1.RecurringSnapshot] = RecurringSnapshotValidator{}

// ValidateCreate implements admission.Validator.
func (RecurringSnapshotValidator) ValidateCreate(_ context.Context, rs *cairnv1.RecurringSnapshot) (admission.Warnings, error) {
	return nil, invalid("RecurringSnapshot", rs.Name, ValidateRecurringSnapshotSpec(&rs.Spec, field.NewPath("spec")))
}

// ValidateUpdate implements admission.Validator. An update that leaves the
// spec as it was (labels, annotations, finalizers) is not validated again:
// the stored spec was, and checking a minutely cron's shortest interval
// costs real CPU on every metadata change.
func (RecurringSnapshotValidator) ValidateUpdate(_ context.Context, old, rs *cairnv1.RecurringSnapshot) (admission.Warnings, error) {
	if equality.Semantic.DeepEqual(old.Spec, rs.Spec) {
		return nil, nil
	}
	return nil, invalid("RecurringSnapshot", rs.Name, ValidateRecurringSnapshotSpec(&rs.Spec, field.NewPath("spec")))
}

// ValidateDelete implements admission.Validator; deletion is always allowed.
func (RecurringSnapshotValidator) ValidateDelete(context.Context, *cairnv1.RecurringSnapshot) (admission.Warnings, error) {
	return nil, nil
}

// ValidateRecurringSnapshotSpec returns every problem in a schedule spec.
func ValidateRecurringSnapshotSpec(spec *cairnv1.RecurringSnapshotSpec, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if _, err := policies.LoadZone(spec.TimeZone); err != nil {
		errs = append(errs, field.Invalid(p.Child("timeZone"), spec.TimeZone, err.Error()))
	}
	sched, err := policies.ParseSchedule(spec.Schedule, spec.TimeZone)
	if err != nil && len(errs) == 0 {
		errs = append(errs, field.Invalid(p.Child("schedule"), spec.Schedule, err.Error()))
	}
	if sched != nil && spec.Jitter != nil && spec.Jitter.Duration > 0 {
		// Reference time is fixed so the answer does not depend on the day
		// the manifest is applied.
		from := time.Date(2026, 1, 1, 0, 0, 0, 0, sched.Location())
		if period := sched.ShortestInterval(from); period > 0 && spec.Jitter.Duration >= period {
			errs = append(errs, field.Invalid(p.Child("jitter"), spec.Jitter.Duration.String(),
				fmt.Sprintf("jitter must be shorter than the schedule's shortest interval (%s), or runs would overlap", period)))
		}
	}
	errs = append(errs, validateSelector(spec.Selector, p.Child("selector"))...)
	return errs
}

// +kubebuilder:webhook:path=/validate-storage-cairn-dev-v1alpha1-volumepolicy,mutating=false,failurePolicy=fail,sideEffects=None,groups=storage.cairn.dev,resources=volumepolicies,verbs=create;update,versions=v1alpha1,name=vvolumepolicy.cairn.dev,admissionReviewVersions=v1

// VolumePolicyValidator checks the selector and node selector syntax.
type VolumePolicyValidator struct{}

var _ admission.Validator[*cairnv1.VolumePolicy] = VolumePolicyValidator{}

// ValidateCreate implements admission.Validator.
func (VolumePolicyValidator) ValidateCreate(_ context.Context, vp *cairnv1.VolumePolicy) (admission.Warnings, error) {
	return nil, invalid("VolumePolicy", vp.Name, ValidateVolumePolicySpec(&vp.Spec, field.NewPath("spec")))
}

// ValidateUpdate implements admission.Validator; an unchanged spec is not
// validated again.
func (VolumePolicyValidator) ValidateUpdate(_ context.Context, old, vp *cairnv1.VolumePolicy) (admission.Warnings, error) {
	if equality.Semantic.DeepEqual(old.Spec, vp.Spec) {
		return nil, nil
	}
	return nil, invalid("VolumePolicy", vp.Name, ValidateVolumePolicySpec(&vp.Spec, field.NewPath("spec")))
}

// ValidateDelete implements admission.Validator; deletion is always allowed.
func (VolumePolicyValidator) ValidateDelete(context.Context, *cairnv1.VolumePolicy) (admission.Warnings, error) {
	return nil, nil
}

// ValidateVolumePolicySpec returns every problem in a policy spec.
func ValidateVolumePolicySpec(spec *cairnv1.VolumePolicySpec, p *field.Path) field.ErrorList {
	errs := validateSelector(spec.Selector, p.Child("selector"))
	if spec.Placement != nil {
		errs = append(errs, metav1validation.ValidateLabels(spec.Placement.NodeSelector, p.Child("placement", "nodeSelector"))...)
	}
	return errs
}

func validateSelector(sel *metav1.LabelSelector, p *field.Path) field.ErrorList {
	if sel == nil {
		return nil
	}
	return metav1validation.ValidateLabelSelector(sel, metav1validation.LabelSelectorValidationOptions{}, p)
}

// ValidateObject runs the checks the webhook makes when obj is created:
// the semantic checks for a kind the webhook serves, none for others. It
// lets clients validate manifests offline (cairnctl validate) with the
// webhook's own messages.
func ValidateObject(obj runtime.Object) field.ErrorList {
	switch o := obj.(type) {
	case *cairnv1.RecurringSnapshot:
		return ValidateRecurringSnapshotSpec(&o.Spec, field.NewPath("spec"))
	case *cairnv1.VolumePolicy:
		return ValidateVolumePolicySpec(&o.Spec, field.NewPath("spec"))
	}
	return nil
}
