package secretfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	hex64 := strings.Repeat("0123456789abcdef", 4)
	b64 := "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA"
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		require.NoError(t, os.Chmod(p, mode))
		return p
	}
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		err           error
	}{
		{"hex", hex64 + "\n", 0o600, nil},
		{"base64", b64, 0o400, nil},
		{"short hex", hex64[:63], 0o600, ErrWeakToken},
		{"short word", "s3cret-token", 0o600, ErrWeakToken},
		{"group readable", hex64, 0o640, ErrInsecureMode},
		{"world readable", hex64, 0o644, ErrInsecureMode},
		{"world writable", hex64, 0o602, ErrInsecureMode},
		{"empty", " \n", 0o600, ErrEmpty},
	} {
		tok, err := ReadToken(write(tc.name, tc.content, tc.mode))
		if tc.err == nil {
			require.NoError(t, err, tc.name)
			require.Equal(t, strings.TrimSpace(tc.content), tok, tc.name)
			continue
		}
		require.ErrorIs(t, err, tc.err, tc.name)
		if secret := strings.TrimSpace(tc.content); secret != "" {
			require.NotContains(t, err.Error(), secret, "%s: the error repeats the secret", tc.name)
		}
	}
	raw := []byte("\n\x00key with edges \t")
	p := filepath.Join(dir, "raw")
	require.NoError(t, os.WriteFile(p, raw, 0o600))
	got, err := ReadRaw(p)
	require.NoError(t, err)
	require.Equal(t, raw, got, "ReadRaw keeps every byte")
	_, err = ReadToken(dir)
	require.ErrorContains(t, err, "not a regular file")
	_, err = ReadToken(filepath.Join(dir, "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
}
