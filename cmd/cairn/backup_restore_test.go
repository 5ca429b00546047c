package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// restoreFixture is a file target holding one backup of a random image.
type restoreFixture struct {
	dir, targetDir, target, backup string
	data                           []byte
}

func newRestoreFixture(t *testing.T) restoreFixture {
	t.Helper()
	dir := t.TempDir()
	fx := restoreFixture{dir: dir, targetDir: filepath.Join(dir, "target")}
	fx.target = "file://" + fx.targetDir
	fx.data = make([]byte, 1<<20)
	_, _ = rand.Read(fx.data)
	img := filepath.Join(dir, "src.img")
	require.NoError(t, os.WriteFile(img, fx.data, 0o600))
	out, err := runBackup(t, "create", "--target", fx.target, "--volume", "v", "--file", img, "--block-size", "64Ki", "-o", "json")
	require.NoError(t, err)
	var info struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	fx.backup = info.ID
	return fx
}

// packFiles lists the stored pack objects of the fixture's target.
func (fx restoreFixture) packFiles(t *testing.T) []string {
	var out []string
	require.NoError(t, filepath.Walk(filepath.Join(fx.targetDir, "packs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			out = append(out, p)
		}
		return err
	}))
	require.NotEmpty(t, out)
	return out
}

// TestBackupRestoreFileFailures: every kind of failed restore into --file
// exits with an error, prints no "restored" line, and leaves IMAGE as it
// was: absent when it did not exist, byte-identical when it did, with no
// temporary file left beside it.
func TestBackupRestoreFileFailures(t *testing.T) {
	cases := []struct {
		name   string
		break_ func(t *testing.T, fx restoreFixture) (args []string, ctx context.Context)
		want   string
	}{
		{"missing block", func(t *testing.T, fx restoreFixture) ([]string, context.Context) {
			require.NoError(t, os.Remove(fx.packFiles(t)[0]))
			return nil, nil
		}, "missing block"},
		{"corrupt block", func(t *testing.T, fx restoreFixture) ([]string, context.Context) {
			// The middle of the (only) pack is inside a block's record.
			p := fx.packFiles(t)[0]
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			b[len(b)/2] ^= 0xff
			require.NoError(t, os.WriteFile(p, b, 0o600))
			return nil, nil
		}, "corrupt"},
		{"bad manifest", func(t *testing.T, fx restoreFixture) ([]string, context.Context) {
			p := filepath.Join(fx.targetDir, "volumes", "v", "backups", fx.backup+".manifest")
			require.NoError(t, os.WriteFile(p, []byte("CAIRM\x01 not a manifest"), 0o600))
			return nil, nil
		}, "manifest"},
		{"unreadable target", func(t *testing.T, fx restoreFixture) ([]string, context.Context) {
			p := filepath.Join(fx.targetDir, "cairn-target.json")
			require.NoError(t, os.WriteFile(p, []byte("{garbage"), 0o600))
			return nil, nil
		}, "cairn-target.json"},
		{"timeout", func(t *testing.T, fx restoreFixture) ([]string, context.Context) {
			return []string{"--timeout", "1ns"}, nil
		}, "deadline"},
		{"interrupted", func(t *testing.T, fx restoreFixture) ([]string, context.Context) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // what SIGINT does to the command's context
			return nil, ctx
		}, "canceled"},
	}
	for _, c := range cases {
		for _, existing := range []bool{false, true} {
			name := c.name + map[bool]string{false: "/new image", true: "/existing image"}[existing]
			t.Run(name, func(t *testing.T) {
				fx := newRestoreFixture(t)
				image := filepath.Join(fx.dir, "out", "restored.img")
				require.NoError(t, os.Mkdir(filepath.Dir(image), 0o700))
				before := []byte("an older image that must survive a failed restore")
				if existing {
					require.NoError(t, os.WriteFile(image, before, 0o600))
				}
				extra, ctx := c.break_(t, fx)
				if ctx == nil {
					ctx = context.Background()
				}
				args := append([]string{"restore", "--target", fx.target, "--volume", "v", "--file", image}, extra...)
				out, errOut, err := runBackupCtx(t, ctx, args...)
				require.Error(t, err)
				require.Contains(t, strings.ToLower(err.Error()), c.want)
				require.NotContains(t, out, "restored")
				require.NotContains(t, errOut, "restored")
				if existing {
					got, rerr := os.ReadFile(image)
					require.NoError(t, rerr)
					require.Equal(t, before, got, "a failed restore changed the existing image")
				} else {
					require.NoFileExists(t, image)
				}
				entries, rerr := os.ReadDir(filepath.Dir(image))
				require.NoError(t, rerr)
				require.Len(t, entries, map[bool]int{false: 0, true: 1}[existing], "leftover files: %v", entries)
			})
		}
	}
}

// TestBackupRestoreFileReplaces: a successful restore over an existing
// image replaces it whole, and --since applies only the changes to the
// image the caller says it holds.
func TestBackupRestoreFileReplaces(t *testing.T) {
	fx := newRestoreFixture(t)
	image := filepath.Join(fx.dir, "restored.img")
	require.NoError(t, os.WriteFile(image, bytes.Repeat([]byte{9}, 3<<20), 0o600))
	out, err := runBackup(t, "restore", "--target", fx.target, "--volume", "v", "--file", image)
	require.NoError(t, err)
	require.Contains(t, out, "restored")
	got, err := os.ReadFile(image)
	require.NoError(t, err)
	require.True(t, bytes.Equal(fx.data, got), "restored image differs")

	// An incremental restore onto the image it holds.
	copy(fx.data[200<<10:], bytes.Repeat([]byte("cairn"), 100))
	src := filepath.Join(fx.dir, "src.img")
	require.NoError(t, os.WriteFile(src, fx.data, 0o600))
	out, err = runBackup(t, "create", "--target", fx.target, "--volume", "v", "--file", src, "--block-size", "64Ki", "-o", "json")
	require.NoError(t, err)
	var second struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &second), out)
	out, err = runBackup(t, "restore", "--target", fx.target, "--volume", "v", "--file", image, "--since", fx.backup, "-o", "json")
	require.NoError(t, err)
	var res struct{ Incremental bool }
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.True(t, res.Incremental)
	got, err = os.ReadFile(image)
	require.NoError(t, err)
	require.True(t, bytes.Equal(fx.data, got), "incrementally restored image differs")

	// --since needs the image it names.
	_, err = runBackup(t, "restore", "--target", fx.target, "--volume", "v", "--file", filepath.Join(fx.dir, "none.img"), "--since", fx.backup)
	require.ErrorContains(t, err, "--since")
	require.NoFileExists(t, filepath.Join(fx.dir, "none.img"))
}
