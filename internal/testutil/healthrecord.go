package testutil

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"

	"github.com/cairnstore/cairn/internal/localcluster"
)

// RecordHealthEnv names the directory StartHealthRecorder writes to; unset,
// nothing is recorded. `make record-health` sets it to
// config/argocd/testdata for the end-to-end suites.
const RecordHealthEnv = "CAIRN_RECORD_HEALTH"

// HealthRecording is one recorded object: its status as a real run left it
// and what kstatus (Flux's reading) made of it then.
type HealthRecording struct {
	// KStatus is kstatus.Compute's status of Object when recorded.
	KStatus string `json:"kstatus"`
	// Object keeps apiVersion, kind, name, generation, spec and status.
	Object map[string]any `json:"object"`
}

// StartHealthRecorder watches every Cairn kind while ctx lives and, when
// $CAIRN_RECORD_HEALTH names a directory, writes one file there for each
// distinct state an object passes through (kind, kstatus, conditions'
// reasons, state/phase/robustness, suspend), so config's Argo CD health
// test runs on statuses real runs produced. It returns at once.
func StartHealthRecorder(ctx context.Context, cfg *rest.Config) error {
	dir := os.Getenv(RecordHealthEnv)
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	crds, err := localcluster.CRDs()
	if err != nil {
		return err
	}
	rec := &recorder{dir: dir, seen: map[string]bool{}}
	for _, crd := range crds {
		gvr := schema.GroupVersionResource{Group: crd.Spec.Group, Version: crd.Spec.Versions[0].Name, Resource: crd.Spec.Names.Plural}
		go rec.watch(ctx, dc.Resource(gvr))
	}
	return nil
}

type recorder struct {
	dir  string
	mu   sync.Mutex
	seen map[string]bool
}

// watch records every version of every object of one kind, re-opening the
// watch when the API server ends it.
func (r *recorder) watch(ctx context.Context, res dynamic.ResourceInterface) {
	for ctx.Err() == nil {
		w, err := res.Watch(ctx, metav1.ListOptions{})
		if err != nil {
			return
		}
		for ev := range w.ResultChan() {
			if u, ok := ev.Object.(*unstructured.Unstructured); ok && (ev.Type == watch.Added || ev.Type == watch.Modified) {
				if err := r.record(u); err != nil {
					fmt.Fprintln(os.Stderr, "health recorder:", err)
				}
			}
		}
		w.Stop()
	}
}

// record writes u's state unless it was seen. Objects being deleted are
// left out: Argo CD reports them Progressing ("Pending deletion") without
// running a health script.
func (r *recorder) record(u *unstructured.Unstructured) error {
	if u.GetDeletionTimestamp() != nil {
		return nil
	}
	res, err := kstatus.Compute(u)
	if err != nil {
		return err
	}
	name := recordingName(u, res.Status)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen[name] {
		return nil
	}
	r.seen[name] = true
	obj := map[string]any{"apiVersion": u.GetAPIVersion(), "kind": u.GetKind(),
		"metadata": map[string]any{"name": u.GetName(), "generation": u.GetGeneration()}}
	if ns := u.GetNamespace(); ns != "" {
		obj["metadata"].(map[string]any)["namespace"] = ns
	}
	for _, k := range []string{"spec", "status"} {
		if v, ok := u.Object[k]; ok {
			obj[k] = v
		}
	}
	data, err := yaml.Marshal(HealthRecording{KStatus: res.Status.String(), Object: obj})
	if err != nil {
		return err
	}
	data = append([]byte("# Recorded from a live object by a Cairn end-to-end run ("+RecordHealthEnv+").\n"), data...)
	return os.WriteFile(filepath.Join(r.dir, name+".yaml"), data, 0o644)
}

var unsafeName = regexp.MustCompile(`[^a-z0-9]+`)

// recordingName names a state: kind, kstatus, then what distinguishes
// phases of a kind (state, phase, robustness, suspend, and the Ready,
// Reconciling and Stalled conditions' status and reason).
func recordingName(u *unstructured.Unstructured, ks kstatus.Status) string {
	parts := []string{u.GetKind(), ks.String()}
	if u.GetGeneration() > 0 {
		if og, ok, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration"); ok && og < u.GetGeneration() {
			parts = append(parts, "unobserved")
		}
	}
	for _, f := range []string{"state", "phase", "robustness"} {
		if v, _, _ := unstructured.NestedString(u.Object, "status", f); v != "" {
			parts = append(parts, v)
		}
	}
	if s, _, _ := unstructured.NestedBool(u.Object, "spec", "suspend"); s {
		parts = append(parts, "suspended")
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, t := range []string{"Ready", "Reconciling", "Stalled"} {
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == t {
				parts = append(parts, fmt.Sprintf("%s-%v-%v", t, m["status"], m["reason"]))
			}
		}
	}
	return strings.Trim(unsafeName.ReplaceAllString(strings.ToLower(strings.Join(parts, "_")), "-"), "-")
}
