// Package durable writes small metadata files crash-safely: the content is
// framed with a magic, a length and a CRC32C, written to a temporary file,
// fdatasynced, renamed over the target and the directory is fsynced. Readers
// verify the frame and name the offending file on any mismatch.
//
// Frame layout (little endian):
//
//	+--------+---------+-----------+----------+---------------+
//	| magic  | version | length    | crc32c   | payload ...   |
//	| 8 B    | u32     | u32       | u32      | length bytes  |
//	+--------+---------+-----------+----------+---------------+
//
// The CRC32C (Castagnoli) covers the magic, version, length and payload.
package durable

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// HeaderSize is the size of the frame header preceding the payload.
const HeaderSize = 20

// MaxPayload bounds the payload of a framed file so a corrupt length can
// never make a reader allocate without limit.
const MaxPayload = 64 << 20

// ErrCorrupt is returned (wrapped, with the file name) when a framed file is
// truncated, has a bad magic, an unknown version or a CRC mismatch.
var ErrCorrupt = errors.New("durable: corrupt file")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C returns the Castagnoli CRC of b.
func CRC32C(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Encode frames payload with magic (exactly 8 bytes) and version.
func Encode(magic string, version uint32, payload []byte) []byte {
	if len(magic) != 8 {
		panic("durable: magic must be 8 bytes")
	}
	buf := make([]byte, HeaderSize+len(payload))
	copy(buf, magic)
	binary.LittleEndian.PutUint32(buf[8:], version)
	binary.LittleEndian.PutUint32(buf[12:], uint32(len(payload)))
	copy(buf[HeaderSize:], payload)
	crc := crc32.Update(0, castagnoli, buf[:16])
	crc = crc32.Update(crc, castagnoli, payload)
	binary.LittleEndian.PutUint32(buf[16:], crc)
	return buf
}

// Decode verifies a frame produced by Encode and returns its version and
// payload. name is used in error messages only.
func Decode(name, magic string, buf []byte) (uint32, []byte, error) {
	if len(buf) < HeaderSize {
		return 0, nil, fmt.Errorf("%w: %s: truncated header (%d bytes)", ErrCorrupt, name, len(buf))
	}
	if string(buf[:8]) != magic {
		return 0, nil, fmt.Errorf("%w: %s: bad magic %q", ErrCorrupt, name, buf[:8])
	}
	version := binary.LittleEndian.Uint32(buf[8:])
	n := binary.LittleEndian.Uint32(buf[12:])
	if n > MaxPayload || int(n) != len(buf)-HeaderSize {
		return 0, nil, fmt.Errorf("%w: %s: length %d does not match file size %d", ErrCorrupt, name, n, len(buf))
	}
	crc := crc32.Update(0, castagnoli, buf[:16])
	crc = crc32.Update(crc, castagnoli, buf[HeaderSize:])
	if want := binary.LittleEndian.Uint32(buf[16:]); crc != want {
		return 0, nil, fmt.Errorf("%w: %s: crc32c mismatch (have %08x, want %08x)", ErrCorrupt, name, crc, want)
	}
	return version, buf[HeaderSize:], nil
}

// DecodePrefix is Decode for a frame at the start of buf followed by
// other bytes (padding, another frame): it verifies the frame the header
// describes and ignores the rest.
func DecodePrefix(name, magic string, buf []byte) (uint32, []byte, error) {
	if len(buf) < HeaderSize {
		return 0, nil, fmt.Errorf("%w: %s: truncated header (%d bytes)", ErrCorrupt, name, len(buf))
	}
	n := binary.LittleEndian.Uint32(buf[12:])
	if n > MaxPayload || int64(n) > int64(len(buf)-HeaderSize) {
		return 0, nil, fmt.Errorf("%w: %s: length %d exceeds the %d bytes available", ErrCorrupt, name, n, len(buf)-HeaderSize)
	}
	return Decode(name, magic, buf[:HeaderSize+int(n)])
}

// ReadFile reads and verifies a framed file.
func ReadFile(path, magic string) (uint32, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	if st.Size() > MaxPayload+HeaderSize {
		return 0, nil, fmt.Errorf("%w: %s: file too large (%d bytes)", ErrCorrupt, path, st.Size())
	}
	buf := make([]byte, st.Size())
	if _, err := f.ReadAt(buf, 0); err != nil {
		return 0, nil, fmt.Errorf("read %s: %w", path, err)
	}
	return Decode(path, magic, buf)
}

// WriteFile atomically replaces path with a framed payload: write a temp
// file in the same directory, fdatasync it, rename it over path, fsync the
// directory. On any error the previous content of path is left intact.
func WriteFile(path, magic string, version uint32, payload []byte) error {
	return WriteRaw(path, Encode(magic, version, payload))
}

// WriteRaw is WriteFile for content that is already framed (or raw).
func WriteRaw(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	// fdatasync suffices: it persists the data and the size needed to
	// read it back; the rename and directory fsync persist the name
	if err = unix.Fdatasync(int(tmp.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s: %w", tmp.Name(), err)
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so that renames and creations in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}
