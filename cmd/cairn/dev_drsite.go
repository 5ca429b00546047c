package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/config"
	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/internal/localcluster"
)

// The second local cluster of `cairn dev --dr-site`: its own etcd,
// kube-apiserver and kube-controller-manager, a `cairn manager` child and
// node agents, all under DATA/dr-site, reading the primary's backups from
// the shared versitygw through a read-only BackupTarget "primary". The
// samples' DisasterRecoveryVolume runs there (not on the primary), so
// flipping its activate in the dr-site is the failover.
type devDRSite struct {
	dir        string
	kubeconfig string
	cluster    *localcluster.Cluster
	client     client.Client
	manager    *managerChild
	nodes      []*devNode
	applied    int
}

// drSiteKinds are the samples applied to the DR site.
var drSiteKinds = map[string]bool{"BackupTarget": true, "RecurringSnapshot": true, "VolumePolicy": true, "DisasterRecoveryVolume": true}

// startDRSite starts the DR site when --dr-site is given.
func (d *devRun) startDRSite(ctx context.Context) error {
	if !d.opts.drSite {
		return nil
	}
	s := &devDRSite{dir: filepath.Join(d.dataDir, "dr-site")}
	d.drSite = s
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	fmt.Printf("Starting the dr-site cluster (state in %s)...\n", s.dir)
	for _, phase := range []func(context.Context, *devRun) error{s.startControlPlane, s.startManager, s.startNodes, s.applySamples} {
		if err := phase(ctx, d); err != nil {
			return fmt.Errorf("dr-site: %w", err)
		}
	}
	return nil
}

func (s *devDRSite) startControlPlane(_ context.Context, d *devRun) error {
	cluster, err := localcluster.Start(localcluster.Options{BinDir: devBinDir(d.opts.binDir), EtcdDataDir: filepath.Join(s.dir, "etcd"),
		Out: d.logFile, ControllerManager: true, StateDir: s.dir})
	if err != nil {
		return err
	}
	s.cluster = cluster
	d.onStop(func() {
		fmt.Println("Stopping the dr-site control plane...")
		if err := cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop dr-site control plane:", err)
		}
	})
	s.kubeconfig = filepath.Join(s.dir, "kubeconfig")
	if err := writeKubeconfig(cluster, s.kubeconfig); err != nil {
		return err
	}
	s.client, err = client.New(cluster.Config, client.Options{Scheme: controllers.NewScheme()})
	return err
}

// startManager runs the DR site's manager as a managerChild (restarted
// when it exits, like --manager-process on the primary) and waits for its
// webhook.
func (s *devDRSite) startManager(ctx context.Context, d *devRun) error {
	s.manager = &managerChild{dir: s.dir, kubeconfig: s.kubeconfig, cluster: s.cluster, csiSocket: filepath.Join(s.dir, "csi", "controller.sock")}
	return d.startManagerChild(ctx, s.manager)
}

// startNodes creates cairn-system and the S3 Secret, and starts the DR
// site's node agents under DATA/dr-site/nodes.
func (s *devDRSite) startNodes(ctx context.Context, d *devRun) error {
	if err := ensureSystemNamespace(ctx, s.client); err != nil {
		return err
	}
	if d.s3 != nil {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: v1.SystemNamespace, Name: devS3Secret}}
		if _, err := controllerutil.CreateOrUpdate(ctx, s.client, sec, func() error {
			sec.Data = map[string][]byte{targets.SecretAccessKeyID: []byte(d.s3.access), targets.SecretSecretAccessKey: []byte(d.s3.secret)}
			return nil
		}); err != nil {
			return err
		}
	}
	nodes, err := startDevNodes(s.dir, s.kubeconfig, d.opts.nodes, plainCommand)
	if err != nil {
		return err
	}
	s.nodes = nodes
	d.onStop(func() {
		fmt.Println("Stopping the dr-site node agents...")
		stopDevNodes(nodes)
	})
	return nil
}

// applySamples applies the samples' BackupTarget (read-only, at the
// primary's backups), RecurringSnapshots (suspended), VolumePolicies and
// DisasterRecoveryVolume.
func (s *devDRSite) applySamples(ctx context.Context, d *devRun) error {
	if !d.opts.samples {
		return nil
	}
	objs, err := localcluster.Build(config.Samples, "samples")
	if err != nil {
		return err
	}
	var mine []*unstructured.Unstructured
	for _, o := range objs {
		if drSiteKinds[o.GetKind()] {
			mine = append(mine, o)
		}
	}
	if err := d.localTargets(mine); err != nil {
		return err
	}
	// As examples/overlays/dr-site: the primary's target read-only, and
	// no backups of the site's own until failover.
	for _, o := range mine {
		field := map[string]string{"BackupTarget": "readOnly", "RecurringSnapshot": "suspend"}[o.GetKind()]
		if field == "" {
			continue
		}
		if err := unstructured.SetNestedField(o.Object, true, "spec", field); err != nil {
			return err
		}
	}
	if err := localcluster.Apply(ctx, s.client, "cairn-dev", mine); err != nil {
		return fmt.Errorf("apply samples: %w", err)
	}
	s.applied = len(mine)
	return nil
}

// primarySamples leaves the DisasterRecoveryVolume out of the primary's
// samples when a DR site runs it.
func (d *devRun) primarySamples(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	if !d.opts.drSite {
		return objs
	}
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() != "DisasterRecoveryVolume" {
			out = append(out, o)
		}
	}
	return out
}

// drSiteBanner is the DR site's part of the banner: labelled lines.
func (d *devRun) drSiteBanner() string {
	s := d.drSite
	if s == nil {
		return ""
	}
	return fmt.Sprintf(`
dr-site (second cluster, reads the primary's backups from the same S3 target):
  dr-site API server   %s
  dr-site kubeconfig   %s
  dr-site manager      %s (log %s)
  dr-site metrics      http://%s/metrics
  dr-site nodes        %d node agents (logs in %s/nodes/NAME/node.log)
  dr-site samples      %s
  dr-site failover     %s
`, s.cluster.Config.Host, s.kubeconfig, "child process, restarted when it exits", filepath.Join(s.dir, "manager.log"), s.manager.metrics, len(s.nodes), s.dir,
		d.samplesLine("dev-dr-site", fmt.Sprintf("%d objects applied (BackupTarget primary read-only, RecurringSnapshots suspended, VolumePolicies, DisasterRecoveryVolume)", s.applied)),
		d.drSiteFailover())
}
