package dashboard

import (
	"net/http"
	"strings"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// editable are the kinds users commit, with the file under examples/base
// that holds them.
var editable = map[string]struct {
	kind, file string
	new        func() client.Object
}{
	"volumepolicy":      {"VolumePolicy", "examples/base/volumepolicies.yaml", func() client.Object { return &v1.VolumePolicy{} }},
	"recurringsnapshot": {"RecurringSnapshot", "examples/base/recurringsnapshots.yaml", func() client.Object { return &v1.RecurringSnapshot{} }},
	"backuptarget":      {"BackupTarget", "examples/base/backuptarget.yaml", func() client.Object { return &v1.BackupTarget{} }},
	"disasterrecoveryvolume": {"DisasterRecoveryVolume", "examples/overlays/dr-site/drvolumes.yaml",
		func() client.Object { return &v1.DisasterRecoveryVolume{} }},
}

type editData struct {
	Kind, Name, File, YAML string
}

// edit shows the object as the manifest to change and commit in git: the
// dashboard never edits configuration itself.
func (s *Server) edit(r *http.Request) (view, error) {
	kind, name := strings.ToLower(r.PathValue("kind")), r.PathValue("name")
	e, ok := editable[kind]
	if !ok {
		return view{}, errNotFound("editable kind", kind)
	}
	obj := e.new()
	ns, n, namespaced := strings.Cut(name, ".")
	key := client.ObjectKey{Name: name}
	if namespaced && e.kind == "DisasterRecoveryVolume" {
		key = client.ObjectKey{Namespace: ns, Name: n}
	}
	if err := s.c.Get(r.Context(), key, obj); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return view{}, errNotFound(e.kind, name)
		}
		return view{}, err
	}
	out, err := manifest(e.kind, obj)
	if err != nil {
		return view{}, err
	}
	return view{Title: "Edit " + e.kind + " " + name, Template: "edit", Data: editData{Kind: e.kind, Name: name, File: e.file, YAML: out}}, nil
}

// manifest renders what belongs in git: apiVersion, kind, name, namespace,
// user labels and annotations and the spec, never status or server fields.
func manifest(kind string, obj client.Object) (string, error) {
	m := map[string]any{}
	b, err := yaml.Marshal(obj)
	if err != nil {
		return "", err
	}
	if err := yaml.Unmarshal(b, &m); err != nil {
		return "", err
	}
	md := map[string]any{"name": obj.GetName()}
	if obj.GetNamespace() != "" {
		md["namespace"] = obj.GetNamespace()
	}
	if l := obj.GetLabels(); len(l) > 0 {
		md["labels"] = l
	}
	if a := userAnnotations(obj.GetAnnotations()); len(a) > 0 {
		md["annotations"] = a
	}
	out, err := yaml.Marshal(map[string]any{"apiVersion": v1.GroupVersion.String(), "kind": kind, "metadata": md, "spec": m["spec"]})
	return string(out), err
}

// userAnnotations drops annotations tools write (last-applied, Argo CD and
// Flux tracking, Cairn's own).
func userAnnotations(in map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range in {
		if strings.Contains(k, "kubectl.kubernetes.io/") || strings.Contains(k, "argocd.argoproj.io/") ||
			strings.Contains(k, "fluxcd.io/") || strings.HasPrefix(k, "storage.cairn.dev/") {
			continue
		}
		out[k] = v
	}
	return out
}
