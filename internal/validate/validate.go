// Package validate checks Cairn manifests offline, the way the API server
// and Cairn's webhook check them on create: the CRD's structural schema
// (unknown fields, defaults, OpenAPI validation, list types) and its CEL
// rules through k8s.io/apiextensions-apiserver's own validation packages,
// object metadata, and then the webhook's semantic checks
// (internal/webhook.ValidateObject). Errors are field.Errors whose Field
// and ErrorBody are what the API server reports as a cause.
//
// Rules comparing with the stored object (oldSelf: immutable fields, no
// shrinking) cannot be checked without the cluster and are skipped, as
// they are on create.
package validate

import (
	"context"
	"fmt"

	apiextensionsinternal "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/listtype"
	schemaobjectmeta "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/objectmeta"
	structuralpruning "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/webhook"
)

// Validator validates objects of Cairn's kinds.
type Validator struct {
	kinds  map[schema.GroupVersionKind]*kindValidator
	scheme *runtime.Scheme
}

type kindValidator struct {
	namespaced bool
	structural *structuralschema.Structural
	schema     apiservervalidation.SchemaValidator
	cel        *cel.Validator
}

// New builds a Validator from the CRDs embedded in the binary (the ones
// `make manifests` generated and the API server is given).
func New() (*Validator, error) {
	crds, err := localcluster.CRDs()
	if err != nil {
		return nil, err
	}
	v := &Validator{kinds: map[schema.GroupVersionKind]*kindValidator{}, scheme: runtime.NewScheme()}
	if err := cairnv1.AddToScheme(v.scheme); err != nil {
		return nil, err
	}
	for _, crd := range crds {
		for _, ver := range crd.Spec.Versions {
			kv, err := newKindValidator(crd, ver)
			if err != nil {
				return nil, fmt.Errorf("CRD %s version %s: %w", crd.Name, ver.Name, err)
			}
			v.kinds[schema.GroupVersionKind{Group: crd.Spec.Group, Version: ver.Name, Kind: crd.Spec.Names.Kind}] = kv
		}
	}
	return v, nil
}

// newKindValidator prepares one version's schema as the API server's
// custom resource handler does.
func newKindValidator(crd *apiextensionsv1.CustomResourceDefinition, ver apiextensionsv1.CustomResourceDefinitionVersion) (*kindValidator, error) {
	internal := &apiextensionsinternal.CustomResourceValidation{}
	if err := apiextensionsv1.Convert_v1_CustomResourceValidation_To_apiextensions_CustomResourceValidation(ver.Schema, internal, nil); err != nil {
		return nil, err
	}
	s, err := structuralschema.NewStructural(internal.OpenAPIV3Schema)
	if err != nil {
		return nil, err
	}
	s = s.DeepCopy()
	if err := structuraldefaulting.PruneDefaults(s); err != nil {
		return nil, err
	}
	sv, _, err := apiservervalidation.NewSchemaValidator(internal.OpenAPIV3Schema)
	if err != nil {
		return nil, err
	}
	return &kindValidator{
		namespaced: crd.Spec.Scope == apiextensionsv1.NamespaceScoped,
		structural: s,
		schema:     sv,
		cel:        cel.NewValidator(s, true, celconfig.PerCallLimit),
	}, nil
}

// Known reports whether obj is of a kind this Validator checks (a Cairn
// kind at a served version).
func (v *Validator) Known(obj *unstructured.Unstructured) bool {
	return v.kinds[obj.GroupVersionKind()] != nil
}

// Validate returns every problem the API server (and Cairn's webhook)
// would report when obj is created. An object of Cairn's group at an
// unknown kind or version is one error; other groups are not checked.
// obj itself is not changed.
func (v *Validator) Validate(ctx context.Context, obj *unstructured.Unstructured) field.ErrorList {
	gvk := obj.GroupVersionKind()
	kv := v.kinds[gvk]
	if kv == nil {
		if gvk.Group == cairnv1.GroupVersion.Group {
			return field.ErrorList{field.Invalid(field.NewPath("kind"), gvk.Kind, fmt.Sprintf("no kind %q at version %q in group %s", gvk.Kind, gvk.Version, gvk.Group))}
		}
		return nil
	}
	u, err := asDecoded(obj)
	if err != nil {
		return field.ErrorList{field.Invalid(nil, nil, err.Error())}
	}
	errs := kv.decode(u)
	errs = append(errs, kv.validate(ctx, u)...)
	if len(errs) > 0 {
		return errs
	}
	return v.webhook(u)
}

// asDecoded copies obj through JSON as the API server decodes it, so
// whole numbers are int64 (a YAML decoder leaves float64, which CEL and the
// schema read differently).
func asDecoded(obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	data, err := obj.MarshalJSON()
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	return u, u.UnmarshalJSON(data)
}

// decode does what the API server does to a request body before
// validating it: unknown fields are reported (as strict field validation,
// kubectl's default, does) and pruned, then defaults are applied.
func (kv *kindValidator) decode(u *unstructured.Unstructured) field.ErrorList {
	var errs field.ErrorList
	for _, p := range structuralpruning.PruneWithOptions(u.Object, kv.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true}) {
		errs = append(errs, &field.Error{Type: field.ErrorTypeNotSupported, Field: p, BadValue: "", Detail: "field not declared in schema"})
	}
	structuraldefaulting.PruneNonNullableNullsWithoutDefaults(u.Object, kv.structural)
	structuraldefaulting.Default(u.Object, kv.structural)
	return errs
}

// validate mirrors customResourceStrategy.Validate: metadata, OpenAPI
// schema, embedded object metadata, list types, then CEL rules unless an
// earlier error blocks them.
func (kv *kindValidator) validate(ctx context.Context, u *unstructured.Unstructured) field.ErrorList {
	errs := apivalidation.ValidateObjectMetaAccessor(u, kv.namespaced, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	errs = append(errs, apiservervalidation.ValidateCustomResource(nil, u.UnstructuredContent(), kv.schema)...)
	errs = append(errs, schemaobjectmeta.Validate(ctx, nil, u.Object, kv.structural, false)...)
	errs = append(errs, listtype.ValidateListSetsAndMaps(nil, kv.structural, u.Object)...)
	if blocked, err := hasBlockingErr(errs); blocked {
		return append(errs, err)
	}
	celErrs, _ := kv.cel.Validate(ctx, nil, kv.structural, u.Object, nil, celconfig.RuntimeCELCostBudget)
	return append(errs, celErrs...)
}

// hasBlockingErr is the API server's rule: type errors and the like stop
// CEL rules from being evaluated.
func hasBlockingErr(errs field.ErrorList) (bool, *field.Error) {
	for _, err := range errs {
		switch err.Type {
		case field.ErrorTypeNotSupported, field.ErrorTypeRequired, field.ErrorTypeTooLong, field.ErrorTypeTooMany, field.ErrorTypeTypeInvalid:
			return true, field.Invalid(nil, nil, "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation")
		}
	}
	return false, nil
}

// webhook runs the validating webhook's checks on the typed object; the API
// server calls the webhook only for objects that passed validation.
func (v *Validator) webhook(u *unstructured.Unstructured) field.ErrorList {
	obj, err := v.scheme.New(u.GroupVersionKind())
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, obj); err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	return webhook.ValidateObject(obj)
}
