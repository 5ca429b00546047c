package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/netx"
)

// managerChild is `cairn manager` run as a child of dev against one local
// cluster (the primary with --manager-process, and always the dr-site's:
// two managers cannot share one process, controller names are global). It
// is started again whenever it exits until dev stops, so tests can
// SIGKILL either one.
type managerChild struct {
	// dir holds its log, manager.log.
	dir        string
	kubeconfig string
	cluster    *localcluster.Cluster
	// csiSocket is where it serves the CSI controller service.
	csiSocket string
	// args are added to the command line (scheduler, verbosity).
	args []string
	// metrics is its metrics address, set by start.
	metrics string
}

// startManagerProcess runs the primary's manager as a managerChild.
func (d *devRun) startManagerProcess(ctx context.Context) error {
	m := &managerChild{dir: d.dataDir, kubeconfig: d.kubeconfig, cluster: d.cluster, csiSocket: d.csiControllerSocket(),
		args: []string{"--no-scheduler=" + strconv.FormatBool(d.opts.noScheduler), "-v", strconv.Itoa(d.opts.verbosity)}}
	d.mgrDone = make(chan error, 1) // dev goes on while the child restarts
	if err := d.startManagerChild(ctx, m); err != nil {
		return err
	}
	d.metrics = m.metrics
	var err error
	d.client, err = client.New(d.cluster.Config, client.Options{Scheme: controllers.NewScheme()})
	return err
}

// startManagerChild starts m under supervision and waits for its webhook
// server; dev's stop stops it with SIGTERM.
func (d *devRun) startManagerChild(ctx context.Context, m *managerChild) error {
	port, err := netx.FreePort("127.0.0.1")
	if err != nil {
		return err
	}
	m.metrics = fmt.Sprintf("127.0.0.1:%d", port)
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(m.csiSocket), 0o700); err != nil {
		return err
	}
	wh := m.cluster.WebhookOptions()
	args := append([]string{"manager", "--metrics-bind-address", m.metrics, "--health-probe-bind-address", "0", "--leader-elect=false",
		"--webhook-port", strconv.Itoa(wh.Port), "--webhook-cert-dir", wh.CertDir, "--csi-endpoint", "unix://" + m.csiSocket}, m.args...)
	supCtx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go m.supervise(supCtx, exe, args, stopped)
	d.onStop(func() {
		cancel()
		<-stopped
	})
	return waitListening(ctx, net.JoinHostPort(wh.Host, strconv.Itoa(wh.Port)), filepath.Join(m.dir, "manager.log"))
}

// supervise runs the manager until ctx ends, starting it again each time
// it exits; on ctx's end it stops it with SIGTERM.
func (m *managerChild) supervise(ctx context.Context, exe string, args []string, stopped chan struct{}) {
	defer close(stopped)
	for ctx.Err() == nil {
		cmd, err := m.command(exe, args)
		if err == nil {
			err = cmd.Start()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "start manager:", err)
			return
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			fmt.Fprintf(os.Stderr, "manager (pid %d, log %s) exited (%v); starting it again\n", cmd.Process.Pid, filepath.Join(m.dir, "manager.log"), err)
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			<-done
		}
	}
}

func (m *managerChild) command(exe string, args []string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(filepath.Join(m.dir, "manager.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+m.kubeconfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	return cmd, nil
}

// waitListening waits up to a minute until something listens at addr
// (a manager's webhook server).
func waitListening(ctx context.Context, addr, log string) error {
	deadline := time.Now().Add(time.Minute)
	for !netx.Listening(ctx, addr, time.Second) {
		if time.Now().After(deadline) {
			return errors.New("the manager's webhook server did not listen within a minute (see " + log + ")")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}
