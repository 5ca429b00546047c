package testutil

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// Dev is a `cairn dev` a test package started in TestMain.
type Dev struct {
	// Bin is the cairn binary built for the run (node agents restarted by
	// a test run it too).
	Bin string
	// DataDir is dev's --data-dir; Kubeconfig is the admin kubeconfig it
	// printed.
	DataDir, Kubeconfig string
	// Banner maps each labelled line dev printed ("kubeconfig",
	// "dashboard", "S3 target", ...) to its value.
	Banner map[string]string
	// Out holds dev's output.
	Out *os.File
	cmd *exec.Cmd
}

// bannerLine is "  LABEL   VALUE": two leading spaces, a label, two or
// more spaces, the value.
var bannerLine = regexp.MustCompile(`^  (\S.*?)\s{2,}(\S.*)$`)

// StartDev builds cairn into tmp, starts `cairn dev` on tmp/dev with
// --bin-dir bin/ and args in its own process group, its output in
// tmp/dev.log, and waits until it prints that it runs.
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
	d.cmd = exec.Command(d.Bin, append([]string{"dev", "--data-dir", d.DataDir, "--bin-dir", BinDir()}, args...)...)
	// Pdeathsig: a killed test binary still stops dev, which stops its clusters.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGINT}
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	d.cmd.Stderr = d.Out
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	if err := d.waitBanner(stdout); err != nil {
		_ = d.Stop()
		// The caller's temporary directory usually goes with the log.
		return nil, fmt.Errorf("%w; the end of its output:\n%s", err, d.outputTail(40))
	}
	d.Kubeconfig = d.Banner["kubeconfig"]
	return d, nil
}

// Stop stops dev with SIGINT as a user would, and kills its process group
// when it has not stopped two minutes later.
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

// waitBanner copies dev's output to Out until "Press Ctrl-C to stop.",
// collecting the labelled lines into Banner.
func (d *Dev) waitBanner(stdout io.Reader) error {
	ready := make(chan map[string]string, 1)
	go func() {
		banner := map[string]string{}
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(d.Out, line)
			// Once handed over, the map is the caller's: later labelled
			// lines (dev keeps printing) must not write into it.
			if banner == nil {
				continue
			}
			if m := bannerLine.FindStringSubmatch(line); m != nil {
				banner[m[1]] = strings.TrimSpace(m[2])
			}
			if strings.HasPrefix(line, "Press Ctrl-C to stop.") {
				ready <- banner
				banner = nil
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

// outputTail is the last n lines dev wrote.
func (d *Dev) outputTail(n int) string {
	tail, _, err := lastLines(d.Out.Name(), n)
	if err != nil {
		return err.Error()
	}
	return tail
}

// lastLines returns the last n lines of a file and how many lines it has.
func lastLines(path string, n int) (string, int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", 0, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n"), len(lines), nil
}

// logTails are dev's logs PrintLogTails prints, relative to its data
// directory: the manager's (--manager-process), the node agents' and
// their children's, the same of the dr-site (--dr-site).
var logTails = []string{"manager.log", "nodes/*/node.log", "nodes/*/log/*.log",
	"dr-site/manager.log", "dr-site/nodes/*/node.log", "dr-site/nodes/*/log/*.log"}

// PrintLogTails writes the end of every log of dev's processes and of
// dev's own output to w, so a failure on a machine that is gone afterwards
// can still be read.
func (d *Dev) PrintLogTails(w io.Writer) {
	var logs []string
	for _, pattern := range logTails {
		m, _ := filepath.Glob(filepath.Join(d.DataDir, pattern))
		logs = append(logs, m...)
	}
	for _, l := range append(logs, d.Out.Name()) {
		tail, n, err := lastLines(l, 15)
		if err != nil {
			continue
		}
		fmt.Fprintf(w, "==> %s (last %d of %d lines) <==\n%s\n", l, min(15, n), n, tail)
	}
}

// WaitNodesReady waits until n CairnNodes report Ready, for at most
// timeout.
func WaitNodesReady(c client.Client, n int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		var nodes v1.CairnNodeList
		if err := c.List(ctx, &nodes); err == nil {
			ready := 0
			for _, node := range nodes.Items {
				if meta.IsStatusConditionTrue(node.Status.Conditions, v1.ConditionReady) {
					ready++
				}
			}
			if ready == n {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d nodes not Ready within %s", n, timeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
