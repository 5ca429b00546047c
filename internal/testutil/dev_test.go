package testutil

import (
	"path/filepath"
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
