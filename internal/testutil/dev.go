package testutil

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Dev is a `cairn dev` a test package started in TestMain.
type Dev struct {
	// Bin is the cairn binary built for the run (node agents restarted by
	// a test run it too).
	Bin string
	// DataDir is dev's --data-dir; Kubeconfig is the admin kubeconfig it
	// printed.
	DataDir, Kubeconfig string
	// Out holds dev's output.
	Out *os.File
	cmd *exec.Cmd
}

// StartDev builds cairn into tmp, starts `cairn dev` on tmp/dev with
// --bin-dir bin/, --samples=false and args, and waits until it prints that
// it runs.
func StartDev(tmp string, args ...string) (*Dev, error) {
	d := &Dev{Bin: filepath.Join(tmp, "cairn"), DataDir: filepath.Join(tmp, "dev")}
	build := exec.Command("go", "build", "-o", d.Bin, "./cmd/cairn")
	build.Dir = RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %v: %s", err, out)
	}
	var err error
	if d.Out, err = os.Create(filepath.Join(tmp, "dev.log")); err != nil {
		return nil, err
	}
	d.cmd = exec.Command(d.Bin, append([]string{"dev", "--data-dir", d.DataDir, "--bin-dir", BinDir(), "--samples=false"}, args...)...)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	d.cmd.Stderr = d.Out
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	if d.Kubeconfig, err = d.waitReady(stdout); err != nil {
		_ = d.Stop()
		return nil, fmt.Errorf("%w (log: %s)", err, d.Out.Name())
	}
	return d, nil
}

// Stop stops dev with SIGINT as a user would, and kills it when it has not
// stopped two minutes later.
func (d *Dev) Stop() error {
	_ = d.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(2 * time.Minute):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		return fmt.Errorf("cairn dev did not stop within 2 minutes of SIGINT")
	}
}

// waitReady copies dev's output to Out until it says it runs, and returns
// the kubeconfig it printed.
func (d *Dev) waitReady(stdout io.Reader) (string, error) {
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		kubeconfig := ""
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(d.Out, line)
			if f := strings.Fields(line); len(f) == 2 && f[0] == "kubeconfig" {
				kubeconfig = f[1]
			}
			if strings.HasPrefix(line, "Press Ctrl-C to stop.") {
				ready <- kubeconfig
			}
		}
		close(ready)
	}()
	select {
	case kc, ok := <-ready:
		if !ok {
			return "", fmt.Errorf("cairn dev exited before it was ready")
		}
		return kc, nil
	case <-time.After(5 * time.Minute):
		return "", fmt.Errorf("cairn dev not ready after 5 minutes")
	}
}

// PrintLogTails writes the end of every node agent's and child's log to w,
// so a failure on a machine that is gone afterwards can still be read.
func (d *Dev) PrintLogTails(w io.Writer) {
	logs, _ := filepath.Glob(filepath.Join(d.DataDir, "nodes", "*", "node.log"))
	children, _ := filepath.Glob(filepath.Join(d.DataDir, "nodes", "*", "log", "*.log"))
	for _, l := range append(logs, children...) {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		fmt.Fprintf(w, "==> %s (last %d of %d lines) <==\n%s\n", l, min(15, len(lines)), len(lines), strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
}
