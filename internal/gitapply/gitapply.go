// Package gitapply is how Cairn's tools apply a GitOps repository's
// manifests: validated offline (internal/validate), then server-side applied
// as Flux does, with fluxcd/pkg/ssa (namespaces and CRDs first, field
// manager cairnctl). `cairnctl apply` and `cairn dev --examples` share it.
package gitapply

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/pkg/ssa"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/internal/validate"
)

// Entry is one object's outcome: created, configured or unchanged.
type Entry struct {
	Object string `json:"object"`
	Action string `json:"action"`
}

// Apply server-side applies the manifests with Flux's resource manager.
func Apply(ctx context.Context, c client.Client, ms []validate.Manifest) ([]Entry, error) {
	objs := make([]*unstructured.Unstructured, len(ms))
	for i, m := range ms {
		objs[i] = m.Object
	}
	rm := ssa.NewResourceManager(c, polling.NewStatusPoller(c, c.RESTMapper(), polling.Options{}), ssa.Owner{Field: "cairnctl", Group: "cairn.dev"})
	cs, err := rm.ApplyAllStaged(ctx, objs, ssa.DefaultApplyOptions())
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, e := range cs.Entries {
		out = append(out, Entry{Object: e.Subject, Action: string(e.Action)})
	}
	return out, nil
}

// Kustomization builds dir, validates it offline and applies it: what
// `cairnctl apply -k DIR` does, with the problems in the error.
func Kustomization(ctx context.Context, c client.Client, dir string) ([]Entry, error) {
	ms, err := validate.Kustomize(dir)
	if err != nil {
		return nil, err
	}
	v, err := validate.New()
	if err != nil {
		return nil, err
	}
	if problems := v.Manifests(ctx, ms); len(problems) > 0 {
		var lines []string
		for _, p := range problems {
			lines = append(lines, p.String())
		}
		return nil, fmt.Errorf("%s: %d problem(s), nothing applied: %s", dir, len(problems), strings.Join(lines, "; "))
	}
	if len(ms) == 0 {
		return nil, errors.New(dir + ": no objects")
	}
	return Apply(ctx, c, ms)
}
