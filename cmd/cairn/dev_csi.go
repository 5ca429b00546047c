package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/cairnstore/cairn/config"
	"github.com/cairnstore/cairn/csi"
	"github.com/cairnstore/cairn/internal/kubeletstub"
	"github.com/cairnstore/cairn/internal/localcluster"
)

// devSidecar is a CSI sidecar dev runs as in a cluster, with its flags
// beyond the socket, kubeconfig and leader election.
type devSidecar struct {
	name string
	// controller: it talks to the CSI controller socket.
	controller bool
	args       []string
}

// devSidecars are built by `make tools` (hack/tools/csi) into bin/.
var devSidecars = []devSidecar{
	{"csi-provisioner", true, []string{"--default-fstype=ext4", "--timeout=60s", "--extra-create-metadata"}},
	{"csi-attacher", true, []string{"--timeout=120s"}},
	{"csi-snapshotter", true, []string{"--timeout=120s"}},
	{"csi-resizer", true, []string{"--timeout=120s"}},
	{"snapshot-controller", false, nil},
}

// devCSI is what dev runs around its CSI driver.
type devCSI struct {
	// missing names the sidecars not built; then none run.
	missing []string
}

// csiSite is a cluster dev runs CSI in: its node agents serve the node
// service at DIR/nodes/NAME/csi.sock, its manager the controller service
// at DIR/csi/controller.sock.
type csiSite struct {
	name    string
	cluster *localcluster.Cluster
	client  client.Client
	nodes   []*devNode
	dir     string
}

func (s csiSite) controllerSocket() string { return filepath.Join(s.dir, "csi", "controller.sock") }

// startCSI runs CSI in the primary.
func (d *devRun) startCSI(ctx context.Context) error {
	d.csi = &devCSI{}
	for _, s := range devSidecars {
		if _, err := os.Stat(filepath.Join(devBinDir(d.opts.binDir), s.name)); err != nil {
			d.csi.missing = append(d.csi.missing, s.name)
		}
	}
	return d.startCSIAt(ctx, csiSite{name: "primary", cluster: d.cluster, client: d.client, nodes: d.nodes, dir: d.dataDir})
}

// startCSIAt installs the snapshot CRDs and the CSIDriver, registers the
// site's simulated nodes and runs the kubelet stand-in on them, then the
// sidecars against the site's CSI controller socket.
func (d *devRun) startCSIAt(ctx context.Context, site csiSite) error {
	if err := site.cluster.InstallSnapshotCRDs(); err != nil {
		return err
	}
	if err := applyCSIDriver(ctx, site.client); err != nil {
		return err
	}
	if err := d.startKubeletStub(ctx, site); err != nil {
		return err
	}
	if len(d.csi.missing) > 0 {
		return nil
	}
	return d.startSidecars(site)
}

// applyCSIDriver applies config/csi/csidriver.yaml, the object a cluster
// gets from config/default.
func applyCSIDriver(ctx context.Context, c client.Client) error {
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(config.CSIDriver, &obj.Object); err != nil {
		return fmt.Errorf("decode CSIDriver: %w", err)
	}
	return localcluster.Apply(ctx, c, "cairn-dev", []*unstructured.Unstructured{obj})
}

// startKubeletStub registers every node agent's CSI node service as the
// kubelet would and publishes the PVCs of pods bound to the nodes.
func (d *devRun) startKubeletStub(ctx context.Context, site csiSite) error {
	var nodes []kubeletstub.Node
	for _, n := range site.nodes {
		dir := filepath.Join(site.dir, "nodes", n.name)
		nodes = append(nodes, kubeletstub.Node{Name: n.name, Dir: dir, Socket: filepath.Join(dir, devNodeCSISocket)})
	}
	stop, err := kubeletstub.Start(ctx, kubeletstub.Options{Config: site.cluster.Config, Driver: csi.DriverName, Nodes: nodes,
		Log: ctrl.Log.WithName("kubelet-stub").WithValues("site", site.name)})
	if err != nil {
		return fmt.Errorf("kubelet stand-in: %w", err)
	}
	d.onStop(stop)
	return nil
}

// startSidecars runs each sidecar with its own kubeconfig, leader election
// off, its log in DIR/csi/NAME.log.
func (d *devRun) startSidecars(site csiSite) error {
	// The manager creates the socket's directory when it starts serving,
	// which may not have happened yet.
	dir := filepath.Dir(site.controllerSocket())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var procs []*devNode
	d.onStop(func() {
		fmt.Printf("Stopping the %s CSI sidecars...\n", site.name)
		stopDevNodes(procs)
	})
	for _, s := range devSidecars {
		kc, err := site.cluster.Kubeconfig("cairn-dev-" + s.name)
		if err != nil {
			return err
		}
		kcPath := filepath.Join(dir, s.name+".kubeconfig")
		if err := os.WriteFile(kcPath, kc, 0o600); err != nil {
			return err
		}
		args := append([]string{"--kubeconfig=" + kcPath, "--leader-election=false"}, s.args...)
		if s.controller {
			args = append(args, "--csi-address="+site.controllerSocket())
		}
		cmd := exec.Command(filepath.Join(devBinDir(d.opts.binDir), s.name), args...)
		p, err := startDevChild(s.name, cmd, filepath.Join(dir, s.name+".log"))
		if err != nil {
			return err
		}
		procs = append(procs, p)
	}
	return nil
}

// csiBanner is the banner's lines on the sidecars and the kubelet stand-in.
func (d *devRun) csiBanner() string {
	dir := filepath.Dir(d.csiControllerSocket())
	sidecars := fmt.Sprintf("%s (logs in %s)", strings.Join(sidecarNames(), ", "), filepath.Join(dir, "NAME.log"))
	if len(d.csi.missing) > 0 {
		sidecars = fmt.Sprintf("none (%s not built: run `make tools`)", strings.Join(d.csi.missing, ", "))
	}
	return fmt.Sprintf("  sidecars     %s\n  kubelet      stand-in: PVCs of pods with spec.nodeName set to a node are published under %s (Pod condition %s)\n",
		sidecars, filepath.Join(d.dataDir, "nodes", "NAME", "pods"), kubeletstub.ConditionVolumesPublished)
}

func sidecarNames() []string {
	var out []string
	for _, s := range devSidecars {
		out = append(out, s.name)
	}
	return out
}
