package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/internal/kubeletstub"
)

// The writer of `cairn dev --examples`: Pod demo/demo-writer on the first
// primary node uses PVC demo/demo-data; once the kubelet stand-in published
// it, dev writes DIR/writer/TIMESTAMP.txt every few seconds and keeps
// DIR/writer/MANIFEST.sha256 (sha256sum format) listing every file written.
const (
	demoNamespace = "demo"
	demoClaim     = "demo-data"
	demoPod       = "demo-writer"
	// demoWriterDir is the writer's directory on the volume.
	demoWriterDir = "writer"
	demoManifest  = "MANIFEST.sha256"
	demoInterval  = 5 * time.Second
)

// devDemo is what --examples runs after the banner.
type devDemo struct {
	path string // where the claim is published on the writer's node
}

// startDemo starts the writer and the live view when --examples is given.
func (d *devRun) startDemo(ctx context.Context) error {
	if d.opts.examples == "" {
		return nil
	}
	d.demo = &devDemo{}
	fmt.Println(d.failoverHelp())
	path, err := d.publishWriter(ctx)
	if ctx.Err() != nil {
		return nil // interrupted while waiting: runDev stops
	}
	if err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	d.demo.path = path
	fmt.Printf("  writer       pod %s/%s on %s writes %s/%s/*.txt every %s, checksums in %s\n", demoNamespace, demoPod, d.nodes[0].name,
		path, demoWriterDir, demoInterval, demoManifest)
	if d.liveView() {
		fmt.Printf("  logs         %s\n", d.logFile.Name())
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() { runWriter(wctx, filepath.Join(path, demoWriterDir)); done <- struct{}{} }()
	go func() { d.runView(wctx); done <- struct{}{} }()
	d.onStop(func() { cancel(); <-done; <-done })
	return nil
}

// failoverHelp is how to fail over, every command as it runs from the
// repository root.
func (d *devRun) failoverHelp() string {
	if d.drSite == nil {
		return ""
	}
	file := filepath.Join(d.opts.examples, "overlays", "dev-dr-site", "drvolume.yaml")
	return fmt.Sprintf(`
To fail over to dr-site: in %s change
    activate: false   to   activate: true
  and apply it to dr-site:
    %s apply -k %s --kubeconfig %s
  This view shows the activation (DisasterRecoveryVolume Active, PVC demo/demo-data Bound on dr-site).
  Look at dr-site:  %s --kubeconfig %s get drv,pvc -n demo
`, file, d.cairnctl(), filepath.Join(d.opts.examples, "overlays", "dev-dr-site"), d.drSite.kubeconfig, d.kubectl(), d.drSite.kubeconfig)
}

// cairnctl is bin/cairnctl beside this binary (make builds both), else the
// one on PATH.
func (d *devRun) cairnctl() string {
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), "cairnctl"); fileExists(p) {
			return p
		}
	}
	return "cairnctl"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// publishWriter creates the writer pod (kept across runs) and waits until
// the kubelet stand-in published its claim; it returns the path.
func (d *devRun) publishWriter(ctx context.Context) (string, error) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: demoNamespace, Name: demoPod}, Spec: corev1.PodSpec{
		NodeName:   d.nodes[0].name,
		Containers: []corev1.Container{{Name: "writer", Image: "busybox", VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
		Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: demoClaim}}}},
	}}
	if err := d.client.Create(ctx, pod); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", err
	}
	fmt.Printf("Waiting for the kubelet stand-in to publish PVC %s/%s on %s...\n", demoNamespace, demoClaim, d.nodes[0].name)
	return waitPublished(ctx, d.client, client.ObjectKeyFromObject(pod))
}

// waitPublished polls the pod's VolumesPublished condition ("VOLUME=PATH"
// pairs) and returns the one path of its claim.
func waitPublished(ctx context.Context, c client.Client, key client.ObjectKey) (string, error) {
	for {
		pod := &corev1.Pod{}
		if err := c.Get(ctx, key, pod); err != nil {
			return "", err
		}
		for _, cond := range pod.Status.Conditions {
			if cond.Type == kubeletstub.ConditionVolumesPublished && cond.Status == corev1.ConditionTrue {
				if _, path, ok := strings.Cut(cond.Message, "="); ok {
					return path, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// runWriter writes a timestamped file every demoInterval into dir and
// rewrites the manifest after each, until ctx ends.
func runWriter(ctx context.Context, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "writer:", err)
		return
	}
	t := time.NewTicker(demoInterval)
	defer t.Stop()
	for {
		if err := writeDemoFile(dir, time.Now().UTC()); err != nil {
			fmt.Fprintln(os.Stderr, "writer:", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// writeDemoFile writes TIMESTAMP.txt and appends its checksum to the
// manifest, each synced before the next step.
func writeDemoFile(dir string, now time.Time) error {
	name := now.Format("20060102T150405.000Z") + ".txt"
	data := []byte(fmt.Sprintf("cairn dev writer: %s\n%s\n", now.Format(time.RFC3339Nano), strings.Repeat("cairn ", 64)))
	if err := writeSynced(filepath.Join(dir, name), data, os.O_CREATE|os.O_TRUNC|os.O_WRONLY); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	line := hex.EncodeToString(sum[:]) + "  " + name + "\n"
	return writeSynced(filepath.Join(dir, demoManifest), []byte(line), os.O_CREATE|os.O_APPEND|os.O_WRONLY)
}

func writeSynced(path string, data []byte, flag int) error {
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return errors.Join(err, f.Sync(), f.Close())
}
