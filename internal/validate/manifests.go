package validate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/konfig"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resource"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Manifest is one object and the file it came from.
type Manifest struct {
	Object *unstructured.Unstructured
	// File is the path of the file that declared the object (for a
	// kustomization, as kustomize's origin tracking reports it, relative to
	// the kustomization directory).
	File string
}

// ID names the object as kubectl does: Kind/name or Kind/namespace/name.
func (m Manifest) ID() string {
	if ns := m.Object.GetNamespace(); ns != "" {
		return m.Object.GetKind() + "/" + ns + "/" + m.Object.GetName()
	}
	return m.Object.GetKind() + "/" + m.Object.GetName()
}

// originFS reads a directory tree from disk, adding origin annotations to
// the build metadata of the root kustomization so every rendered object
// says which file declared it.
type originFS struct {
	filesys.FileSystem
	root string
}

func (f originFS) ReadFile(path string) ([]byte, error) {
	data, err := f.FileSystem.ReadFile(path)
	if err != nil || filepath.Dir(path) != f.root || !isKustomizationFile(filepath.Base(path)) {
		return data, err
	}
	var k map[string]any
	if err := yaml.Unmarshal(data, &k); err != nil {
		return data, nil // kustomize reports the syntax error itself
	}
	if k == nil {
		k = map[string]any{}
	}
	meta, _ := k["buildMetadata"].([]any)
	k["buildMetadata"] = append(meta, types.OriginAnnotations)
	return yaml.Marshal(k)
}

func isKustomizationFile(name string) bool {
	for _, n := range konfig.RecognizedKustomizationFileNames() {
		if n == name {
			return true
		}
	}
	return false
}

// Kustomize builds the kustomization in dir (as `kustomize build DIR`,
// Flux and Argo CD do) and returns its objects with their source files.
func Kustomize(dir string) ([]Manifest, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(abs); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	fs := originFS{FileSystem: filesys.MakeFsOnDisk(), root: abs}
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fs, abs)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var out []Manifest
	for _, r := range res.Resources() {
		m, err := manifestOf(r, dir)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// manifestOf converts a rendered resource, taking its origin annotation
// off again.
func manifestOf(r *resource.Resource, dir string) (Manifest, error) {
	origin, err := r.GetOrigin()
	if err != nil {
		return Manifest{}, err
	}
	if err := r.SetOrigin(nil); err != nil {
		return Manifest{}, err
	}
	data, err := r.MarshalJSON()
	if err != nil {
		return Manifest{}, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return Manifest{}, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	if len(u.GetAnnotations()) == 0 {
		unstructured.RemoveNestedField(u.Object, "metadata", "annotations")
	}
	file := dir
	if origin != nil && origin.Path != "" {
		file = filepath.Join(dir, origin.Path)
	}
	return Manifest{Object: u, File: file}, nil
}

// Files reads objects from YAML or JSON files (several documents each).
func Files(paths []string) ([]Manifest, error) {
	var out []Manifest
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			u := &unstructured.Unstructured{}
			err := dec.Decode(&u.Object)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			if u.GetKind() == "" || u.GetAPIVersion() == "" {
				return nil, fmt.Errorf("%s: a document without apiVersion and kind", p)
			}
			out = append(out, Manifest{Object: u, File: p})
		}
	}
	return out, nil
}

// Problem is one validation error of one object.
type Problem struct {
	File    string `json:"file"`
	Object  string `json:"object"`
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	return fmt.Sprintf("%s: %s: %s: %s", p.File, p.Object, p.Field, p.Message)
}

// Manifests validates every Cairn object and returns the problems, in the
// order of the manifests.
func (v *Validator) Manifests(ctx context.Context, ms []Manifest) []Problem {
	var out []Problem
	for _, m := range ms {
		for _, e := range v.Validate(ctx, m.Object) {
			out = append(out, Problem{File: m.File, Object: m.ID(), Field: fieldOf(e.Field), Message: e.ErrorBody()})
		}
	}
	return out
}

func fieldOf(f string) string {
	if f == "" || f == "<nil>" {
		return "(object)"
	}
	return f
}
