package testutil

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// Dev is a `cairn dev` a test suite started.
type Dev struct {
	// Bin is the cairn binary the suite built.
	Bin string
	// DataDir is dev's --data-dir.
	DataDir string
	// Banner maps each labelled line dev printed ("kubeconfig",
	// "dashboard", "S3 target", ...) to its value.
	Banner map[string]string
	cmd    *exec.Cmd
}

// bannerLine is "  LABEL   VALUE": two leading spaces, a label, two or
// more spaces, the value.
var bannerLine = regexp.MustCompile(`^  (\S.*?)\s{2,}(\S.*)$`)

// StartDev builds cmd/cairn into dir, runs `cairn dev --data-dir dir/dev
// --bin-dir bin/ args...` in its own process group with its output in log,
// and returns once it printed that it runs.
func StartDev(dir string, log io.Writer, args ...string) (*Dev, error) {
	d := &Dev{Bin: filepath.Join(dir, "cairn"), DataDir: filepath.Join(dir, "dev"), Banner: map[string]string{}}
	build := exec.Command("go", "build", "-o", d.Bin, "./cmd/cairn")
	build.Dir = RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %v: %s", err, out)
	}
	d.cmd = exec.Command(d.Bin, append([]string{"dev", "--data-dir", d.DataDir, "--bin-dir", BinDir()}, args...)...)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	d.cmd.Stderr = log
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	if err := d.waitBanner(stdout, log); err != nil {
		_ = d.Stop()
		return nil, err
	}
	return d, nil
}

// waitBanner copies dev's output to log until "Press Ctrl-C to stop.",
// collecting the labelled lines.
func (d *Dev) waitBanner(stdout io.Reader, log io.Writer) error {
	ready := make(chan map[string]string, 1)
	go func() {
		banner := map[string]string{}
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(log, line)
			if m := bannerLine.FindStringSubmatch(line); m != nil {
				banner[m[1]] = strings.TrimSpace(m[2])
			}
			if strings.HasPrefix(line, "Press Ctrl-C to stop.") {
				ready <- banner
			}
		}
		close(ready)
	}()
	select {
	case b, ok := <-ready:
		if !ok {
			return fmt.Errorf("cairn dev exited before it was ready")
		}
		d.Banner = b
		return nil
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("cairn dev not ready after 5 minutes")
	}
}

// Stop interrupts dev as a user would (Ctrl-C) and waits for it; after
// two minutes it kills its process group.
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
