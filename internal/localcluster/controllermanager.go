package localcluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ControllerManagerControllers are the kube-controller-manager controllers
// Cairn relies on: owner-reference garbage collection, PV/PVC binding and
// expansion, namespace deletion, and the PVC and PV protection controllers
// that remove the finalizers the API server's StorageObjectInUseProtection
// admission puts on every claim and volume (without them a deleted PVC
// never goes).
var ControllerManagerControllers = []string{
	"garbage-collector-controller",
	"persistentvolume-binder-controller",
	"persistentvolume-expander-controller",
	"namespace-controller",
	"persistentvolumeclaim-protection-controller",
	"persistentvolume-protection-controller",
}

// startControllerManager runs kube-controller-manager from binDir against
// the cluster, as a cluster-admin user, with its kubeconfig in dir. It
// serves no port of its own.
func (c *Cluster) startControllerManager(binDir, dir string, out io.Writer) error {
	bin := filepath.Join(binDir, "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%w: kube-controller-manager not found in %s: run `make tools`", ErrMissingBinary, binDir)
	}
	kc, err := c.Kubeconfig("cairn-kube-controller-manager")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(dir, "kube-controller-manager.kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin,
		"--kubeconfig="+path,
		"--controllers="+strings.Join(ControllerManagerControllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--concurrent-gc-syncs=5",
	)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, like etcd and kube-apiserver: Stop ends it, and
	// a killed parent leaves it for the next `cairn dev` to name.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		return fmt.Errorf("start kube-controller-manager: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	c.stopKCM = func() { cancel(); <-done }
	return nil
}
