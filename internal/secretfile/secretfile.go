// Package secretfile reads tokens and keys from files only their owner can
// read. A secret in a group- or world-accessible file, or a token too short
// to resist guessing, is refused with an error that names the file and the
// fix but never the secret.
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
)

var (
	// ErrInsecureMode: the file is readable or writable by group or others.
	ErrInsecureMode = errors.New("secretfile: file is accessible by group or others")
	// ErrWeakToken: the token carries fewer than MinTokenBits bits.
	ErrWeakToken = errors.New("secretfile: token too short")
	// ErrEmpty: the file holds only whitespace.
	ErrEmpty = errors.New("secretfile: file is empty")
)

// MinTokenBits is the least entropy a token may carry: 32 random bytes.
const MinTokenBits = 256

// maxSize bounds what is read: secrets are small.
const maxSize = 64 << 10

// Read returns the content of path with surrounding whitespace removed
// (see ReadRaw for the checks).
func Read(path string) ([]byte, error) {
	b, err := ReadRaw(path)
	if err != nil {
		return nil, err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil, fmt.Errorf("%w: %s", ErrEmpty, path)
	}
	return []byte(s), nil
}

// ReadRaw returns the bytes of path as they are, for binary keys. The file
// must be a regular, non-empty file with no group or other permission bits
// (0600 or 0400), checked on the opened descriptor, so a swapped path
// cannot slip through between the check and the read.
func ReadRaw(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read secret: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read secret: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("read secret %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; make it 0600 (chmod 600 %s)", ErrInsecureMode, path, perm, path)
	}
	if st.Size() > maxSize {
		return nil, fmt.Errorf("read secret %s: %d bytes, more than a secret file may hold (%d)", path, st.Size(), maxSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read secret %s: %w", path, err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrEmpty, path)
	}
	return b, nil
}

// ReadToken reads an access token from path (see Read) and checks its
// strength (see CheckToken).
func ReadToken(path string) (string, error) {
	b, err := Read(path)
	if err != nil {
		return "", err
	}
	tok := string(b)
	if err := CheckToken(tok); err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	return tok, nil
}

// CheckToken refuses a token that cannot carry MinTokenBits bits: its length
// times the bits per character of the smallest alphabet it is written in
// (hex 4, base64 6, any other printable text log2(95)). 64 hex digits or 43
// base64 characters pass; "s3cret" does not. The message never repeats the
// token.
func CheckToken(tok string) error {
	if bits := TokenBits(tok); bits < MinTokenBits {
		return fmt.Errorf("%w: at most %.0f bits, need %d (use 32 random bytes, e.g. `openssl rand -hex 32`)", ErrWeakToken, bits, MinTokenBits)
	}
	return nil
}

// TokenBits is the most entropy tok can carry given its alphabet.
func TokenBits(tok string) float64 {
	perChar := 4.0
	for _, c := range tok {
		switch {
		case isHex(c):
		case isBase64(c):
			perChar = max(perChar, 6)
		default:
			perChar = max(perChar, math.Log2(95))
		}
	}
	return float64(len(tok)) * perChar
}

func isHex(c rune) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isBase64(c rune) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.ContainsRune("+/=-_", c)
}
