package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// runBackup runs `cairn backup args...` in-process and returns stdout.
func runBackup(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, _, err := runBackupCtx(t, context.Background(), args...)
	return out, err
}

// runBackupCtx runs `cairn backup args...` in-process under ctx (whose
// cancellation is what SIGINT does) and returns stdout and stderr.
func runBackupCtx(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newBackupCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// TestBackupCLI drives the operator commands end to end on a file target
// with encryption: create (full, then incremental), list, verify, restore
// byte-exact, delete, and clear errors for bad input.
func TestBackupCLI(t *testing.T) {
	dir := t.TempDir()
	target := "file://" + filepath.Join(dir, "target")
	keyFile := filepath.Join(dir, "key")
	require.NoError(t, os.WriteFile(keyFile, bytes.Repeat([]byte{7}, 32), 0o600))
	img := filepath.Join(dir, "vol.img")
	data := make([]byte, 8<<20)
	_, _ = rand.Read(data[:3<<20]) // 3 MiB of data, the rest zeros
	require.NoError(t, os.WriteFile(img, data, 0o600))
	common := []string{"--target", target, "--key-file", keyFile, "-o", "json"}

	out, err := runBackup(t, append([]string{"create", "--volume", "v1", "--file", img}, common...)...)
	require.NoError(t, err)
	var first struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &first), out)
	require.NotEmpty(t, first.ID)

	// Change 4 KiB and take an incremental backup.
	copy(data[5<<20:], bytes.Repeat([]byte("cairn"), 1000))
	require.NoError(t, os.WriteFile(img, data, 0o600))
	out, err = runBackup(t, append([]string{"create", "--volume", "v1", "--file", img}, common...)...)
	require.NoError(t, err)
	var second struct{ ID, Parent string }
	require.NoError(t, json.Unmarshal([]byte(out), &second), out)
	require.NotEqual(t, first.ID, second.ID)

	out, err = runBackup(t, append([]string{"list", "--volume", "v1"}, common...)...)
	require.NoError(t, err)
	require.Contains(t, out, first.ID)
	require.Contains(t, out, second.ID)

	_, err = runBackup(t, append([]string{"verify", "--volume", "v1"}, common...)...)
	require.NoError(t, err)

	restored := filepath.Join(dir, "restored.img")
	_, err = runBackup(t, append([]string{"restore", "--volume", "v1", "--backup", second.ID, "--file", restored}, common...)...)
	require.NoError(t, err)
	got, err := os.ReadFile(restored)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "restored image differs")

	_, err = runBackup(t, append([]string{"delete", "--volume", "v1", "--backup", first.ID}, common...)...)
	require.NoError(t, err)
	out, err = runBackup(t, append([]string{"list", "--volume", "v1"}, common...)...)
	require.NoError(t, err)
	var listed []struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &listed), out)
	require.Len(t, listed, 1)
	require.Equal(t, second.ID, listed[0].ID)
	// The remaining (incremental) backup still restores alone.
	_, err = runBackup(t, append([]string{"verify", "--volume", "v1", "--backup", second.ID}, common...)...)
	require.NoError(t, err)

	// Bad input is a clear error, not a panic.
	_, err = runBackup(t, "list", "--target", "ftp://x/y")
	require.ErrorContains(t, err, "ftp")
	_, err = runBackup(t, "list", "--volume", "v1")
	require.ErrorContains(t, err, "--target is required")
	wrongKey := filepath.Join(dir, "wrong")
	require.NoError(t, os.WriteFile(wrongKey, bytes.Repeat([]byte{8}, 32), 0o600))
	_, err = runBackup(t, "restore", "--target", target, "--key-file", wrongKey, "--volume", "v1", "--file", filepath.Join(dir, "x.img"))
	require.Error(t, err)
}
