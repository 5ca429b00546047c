package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/config"
	"github.com/cairnstore/cairn/internal/gitapply"
	"github.com/cairnstore/cairn/internal/localcluster"
)

// The GitOps story of `make dev`: examples/overlays/dev-primary applied to
// the primary and dev-dr-site to the dr-site, through the code path of
// `cairnctl apply -k` (internal/gitapply), after cairn dev's own
// BackupTarget primary at the local S3 target (the overlays leave it out).

func addExamplesFlags(f *pflag.FlagSet, o *devOptions) {
	f.StringVar(&o.examples, "examples", "", "a GitOps repository laid out as examples/: apply its overlays dev-primary (and dev-dr-site with --dr-site) instead of the samples, run a writer on demo/demo-data and show a live view")
	f.BoolVar(&o.headless, "headless", false, "with --examples: print the live view as plain log lines, one per change (default when stdout is not a terminal)")
}

// applyExamples applies BackupTarget primary and the dev overlays, and
// runs CSI in the dr-site too.
func (d *devRun) applyExamples(ctx context.Context) error {
	if d.opts.examples == "" {
		return nil
	}
	if err := d.applyOverlay(ctx, d.client, "primary", "dev-primary", false); err != nil {
		return err
	}
	s := d.drSite
	if s == nil {
		return nil
	}
	// The activated volume is published on a dr-site node as on the primary.
	if err := d.startCSIAt(ctx, csiSite{name: "dr-site", cluster: s.cluster, client: s.client, nodes: s.nodes, dir: s.dir}); err != nil {
		return fmt.Errorf("dr-site: CSI: %w", err)
	}
	return d.applyOverlay(ctx, s.client, "dr-site", "dev-dr-site", true)
}

// applyOverlay applies BackupTarget primary (read-only on a DR site), then
// examples/overlays/OVERLAY, printing each object's outcome.
func (d *devRun) applyOverlay(ctx context.Context, c client.Client, site, overlay string, readOnly bool) error {
	if err := d.applyDevTarget(ctx, c, readOnly); err != nil {
		return fmt.Errorf("%s: BackupTarget primary: %w", site, err)
	}
	dir := filepath.Join(d.opts.examples, "overlays", overlay)
	entries, err := gitapply.Kustomization(ctx, c, dir)
	if err != nil {
		return fmt.Errorf("%s: apply %s: %w", site, dir, err)
	}
	fmt.Printf("Applied %s to %s (as `cairnctl apply -k %s`):\n", dir, site, dir)
	for _, e := range entries {
		fmt.Printf("    %-60s %s\n", e.Object, e.Action)
	}
	return nil
}

// applyDevTarget applies the samples' BackupTarget primary pointed at the
// local S3 target (or DATA/backups).
func (d *devRun) applyDevTarget(ctx context.Context, c client.Client, readOnly bool) error {
	objs, err := localcluster.Build(config.Samples, "samples")
	if err != nil {
		return err
	}
	var targets []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "BackupTarget" {
			targets = append(targets, o)
		}
	}
	if err := d.localTargets(targets); err != nil {
		return err
	}
	for _, o := range targets {
		if err := unstructured.SetNestedField(o.Object, readOnly, "spec", "readOnly"); err != nil {
			return err
		}
	}
	return localcluster.Apply(ctx, c, "cairn-dev", targets)
}

// drSiteFailover is the banner's failover command: with --examples the
// overlay applied with activate: true (see failoverHelp), else a patch of
// the samples' DisasterRecoveryVolume.
func (d *devRun) drSiteFailover() string {
	if d.opts.examples != "" {
		return fmt.Sprintf("%s apply -k %s --kubeconfig %s (after setting activate: true in %s)", d.cairnctl(),
			filepath.Join(d.opts.examples, "overlays", "dev-dr-site"), d.drSite.kubeconfig, filepath.Join(d.opts.examples, "overlays", "dev-dr-site", "drvolume.yaml"))
	}
	return fmt.Sprintf(`KUBECONFIG=%s %s patch drv -n default pg-data-dr --type merge -p '{"spec":{"activate":true}}'`, d.drSite.kubeconfig, d.kubectl())
}

// samplesLine is the banner's samples value: what was applied from
// config/samples, or, with --examples, the overlay applied instead.
func (d *devRun) samplesLine(overlay, applied string) string {
	if d.opts.examples == "" {
		return applied
	}
	return fmt.Sprintf("none: %s applied instead (--examples)", filepath.Join(d.opts.examples, "overlays", overlay))
}
