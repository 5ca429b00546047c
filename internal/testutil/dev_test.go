package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestStartDevReportsEarlyExit: a dev that exits before it is ready is
// reported with its own last words, since the caller's temporary directory
// (and dev.log in it) is usually removed right after.
func TestStartDevReportsEarlyExit(t *testing.T) {
	tmp := t.TempDir()
	_, err := StartDev(tmp, "--bin-dir", filepath.Join(tmp, "no-tools"))
	require.ErrorContains(t, err, "cairn dev exited before it was ready")
	require.ErrorContains(t, err, "etcd not found in "+filepath.Join(tmp, "no-tools"), "dev's own error is in the message")
}

// TestPrintLogTails: a failing suite gets the end of each node agent's,
// child's and manager's log, of both sites, and of dev's own output.
func TestPrintLogTails(t *testing.T) {
	tmp := t.TempDir()
	d := &Dev{DataDir: filepath.Join(tmp, "dev")}
	var lines []string
	for i := 1; i <= 20; i++ {
		lines = append(lines, fmt.Sprintf("line %d", i))
	}
	logs := []string{"manager.log", "nodes/n1/node.log", "nodes/n1/log/engine-v.log",
		"dr-site/manager.log", "dr-site/nodes/n1/node.log", "dr-site/nodes/n1/log/replica-v.log"}
	for _, l := range logs {
		p := filepath.Join(d.DataDir, l)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600))
	}
	var err error
	d.Out, err = os.Create(filepath.Join(tmp, "dev.log"))
	require.NoError(t, err)
	_, err = d.Out.WriteString("Press Ctrl-C to stop.\n")
	require.NoError(t, err)

	var out strings.Builder
	d.PrintLogTails(&out)
	for _, l := range logs {
		require.Contains(t, out.String(), "==> "+filepath.Join(d.DataDir, l)+" (last 15 of 20 lines) <==\nline 6\n")
	}
	require.Contains(t, out.String(), "==> "+d.Out.Name()+" (last 1 of 1 lines) <==\nPress Ctrl-C to stop.\n")
	require.NotContains(t, out.String(), "line 5\n")
}
