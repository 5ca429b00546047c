package main

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/secretfile"
	"github.com/cairnstore/cairn/internal/testutil"
)

// TestBackupURLCredentialsRedacted: a target URL with credentials in it is
// refused, and neither the error nor stderr repeats the secret (which may
// hold '/' and '+', as AWS secrets do).
func TestBackupURLCredentialsRedacted(t *testing.T) {
	for _, url := range []string{
		"s3://AKIAEXAMPLE:wJalrXUtnFEMIK7MDENG@bucket/prefix",
		"s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCY@bucket/prefix",
		"s3://AKIAEXAMPLE:wJalrXUtnFEMI%zzK7MDENG@bucket/prefix",
		"file://AKIAEXAMPLE:wJalrXUtnFEMIK7MDENG@host/path",
	} {
		_, errOut, err := runBackupCtx(t, t.Context(), "list", "--target", url)
		require.Error(t, err, url)
		require.Contains(t, err.Error(), "REDACTED")
		for _, secret := range []string{"wJalrXUtnFEMI", "K7MDENG", "AKIAEXAMPLE"} {
			require.NotContains(t, err.Error(), secret)
			require.NotContains(t, errOut, secret)
		}
	}
}

// TestBackupSecretFiles: the key file and the credentials file must be
// private to their owner (0600); the errors name the file and never its
// content; CAIRN_BACKUP_KEY still works.
func TestBackupSecretFiles(t *testing.T) {
	dir := t.TempDir()
	target := "file://" + filepath.Join(dir, "target")
	key := bytes.Repeat([]byte("k"), 32)
	keyFile := filepath.Join(dir, "key")
	require.NoError(t, os.WriteFile(keyFile, key, 0o644))
	img := filepath.Join(dir, "vol.img")
	require.NoError(t, os.WriteFile(img, bytes.Repeat([]byte("data"), 64<<10), 0o600))

	_, err := runBackup(t, "create", "--target", target, "--key-file", keyFile, "--volume", "v", "--file", img)
	require.ErrorIs(t, err, secretfile.ErrInsecureMode)
	require.NotContains(t, err.Error(), string(key))
	require.NoError(t, os.Chmod(keyFile, 0o600))
	_, err = runBackup(t, "create", "--target", target, "--key-file", keyFile, "--volume", "v", "--file", img)
	require.NoError(t, err)

	t.Setenv("CAIRN_BACKUP_KEY", string(key))
	out, err := runBackup(t, "list", "--target", target, "--volume", "v")
	require.NoError(t, err)
	require.Contains(t, out, "BACKUP")

	creds := filepath.Join(dir, "creds")
	require.NoError(t, os.WriteFile(creds, []byte("AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nAWS_SECRET_ACCESS_KEY: hunter2secret\n"), 0o644))
	_, err = runBackup(t, "list", "--target", "s3://bkt/p", "--credentials-file", creds)
	require.ErrorIs(t, err, secretfile.ErrInsecureMode)
	require.NoError(t, os.Chmod(creds, 0o600))
	_, err = runBackup(t, "list", "--target", "s3://bkt/p", "--credentials-file", creds)
	require.ErrorContains(t, err, "line 2 is not KEY=VALUE")
	require.NotContains(t, err.Error(), "hunter2secret")
}

// TestBackupRestoreStall: a restore from an S3 server that trickles pack
// ranges one byte per second fails after --stall-timeout, with no
// --timeout, and leaves no image.
func TestBackupRestoreStall(t *testing.T) {
	fx := newRestoreFixture(t)
	fake := testutil.StartFakeS3(t, fx.targetDir)
	fake.Hook = func(w http.ResponseWriter, r *http.Request, key string) bool {
		if !strings.HasPrefix(key, "packs/") || r.Method != http.MethodGet {
			return false
		}
		testutil.Trickle(w, r, filepath.Join(fx.targetDir, filepath.FromSlash(key)), time.Second)
		return true
	}
	creds := filepath.Join(fx.dir, "creds")
	require.NoError(t, os.WriteFile(creds, []byte("AWS_ACCESS_KEY_ID=k\nAWS_SECRET_ACCESS_KEY=s\n"), 0o600))
	image := filepath.Join(fx.dir, "restored.img")
	start := time.Now()
	out, err := runBackup(t, "restore", "--target", "s3://"+fake.Bucket, "--endpoint", fake.Endpoint,
		"--credentials-file", creds, "--read-only", "--stall-timeout", "300ms", "--volume", "v", "--file", image)
	require.ErrorContains(t, err, "stalled")
	require.NotContains(t, out, "restored")
	require.Less(t, time.Since(start), 15*time.Second)
	require.NoFileExists(t, image)
}
