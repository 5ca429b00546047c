package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/testutil"
)

// TestWithoutCairn runs every command that reads or writes Cairn's objects
// against a real API server without Cairn's CRDs: each says so in one line.
func TestWithoutCairn(t *testing.T) {
	t.Parallel()
	cluster, err := localcluster.Start(localcluster.Options{BinDir: testutil.BinDir(), WithoutCairn: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, cluster.Stop()) })
	kc, err := cluster.Kubeconfig("cairnctl-test")
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, os.WriteFile(path, kc, 0o600))
	const want = "the cluster has no storage.cairn.dev API: Cairn is not installed there (its CRDs are missing)"
	for _, args := range [][]string{
		{"status"},
		{"status", "-o", "json"},
		{"dr", "status"},
		{"snapshot", "v"},
		{"backup", "v"},
		{"backup", "list"},
		{"backup", "verify", "b"},
		{"restore", "b", "--to", "v"},
		{"apply", "-k", examples("overlays", "production")},
	} {
		t.Run(args[0]+" "+args[len(args)-1], func(t *testing.T) {
			requireUserError(t, ctlRaw(t, append(args, "--kubeconfig", path)...), want)
		})
	}
}
