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
	"github.com/cairnstore/cairn/internal/netx"
)

// startManagerProcess runs `cairn manager` as a child against the dev
// cluster, serving the webhook the cluster is configured for, and starts
// it again whenever it exits until dev stops.
func (d *devRun) startManagerProcess(ctx context.Context) error {
	port, err := netx.FreePort("127.0.0.1")
	if err != nil {
		return err
	}
	d.metrics = fmt.Sprintf("127.0.0.1:%d", port)
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	wh := d.cluster.WebhookOptions()
	args := []string{"manager", "--metrics-bind-address", d.metrics, "--health-probe-bind-address", "0", "--leader-elect=false",
		"--webhook-port", strconv.Itoa(wh.Port), "--webhook-cert-dir", wh.CertDir, "--csi-endpoint", "unix://" + d.csiControllerSocket(),
		"--no-scheduler=" + strconv.FormatBool(d.opts.noScheduler), "-v", strconv.Itoa(d.opts.verbosity)}
	supCtx, cancel := context.WithCancel(ctx)
	d.mgrDone = make(chan error, 1) // dev goes on while the child restarts
	stopped := make(chan struct{})
	go d.superviseManager(supCtx, exe, args, stopped)
	d.onStop(func() {
		cancel()
		<-stopped
	})
	if err := waitListening(ctx, net.JoinHostPort(wh.Host, strconv.Itoa(wh.Port))); err != nil {
		return err
	}
	d.client, err = client.New(d.cluster.Config, client.Options{Scheme: controllers.NewScheme()})
	return err
}

// superviseManager runs the manager until ctx ends, starting it again
// each time it exits; on ctx's end it stops it with SIGTERM.
func (d *devRun) superviseManager(ctx context.Context, exe string, args []string, stopped chan struct{}) {
	defer close(stopped)
	for ctx.Err() == nil {
		cmd, err := d.managerCommand(exe, args)
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
			fmt.Fprintf(os.Stderr, "manager (pid %d) exited (%v); starting it again\n", cmd.Process.Pid, err)
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			<-done
		}
	}
}

func (d *devRun) managerCommand(exe string, args []string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(filepath.Join(d.dataDir, "manager.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+d.kubeconfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	return cmd, nil
}

// waitListening waits up to a minute until something listens at addr
// (the manager's webhook server).
func waitListening(ctx context.Context, addr string) error {
	deadline := time.Now().Add(time.Minute)
	for !netx.Listening(ctx, addr, time.Second) {
		if time.Now().After(deadline) {
			return errors.New("the manager's webhook server did not listen within a minute (see manager.log)")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}
