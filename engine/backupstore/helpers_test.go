package backupstore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/stretchr/testify/require"
)

const (
	testSize      = 16 << 20
	testBlockSize = 64 << 10
	testPackSize  = 256 << 10
)

// testTarget is one target kind the shared suite runs against.
type testTarget struct {
	name string
	url  string
	opts Options
	s3   *testutil.S3Server // nil for file targets
	dir  string             // where the objects live on disk
}

// forEachTarget runs fn against a fresh file target and a fresh S3 target
// (versitygw): both kinds pass the same suite.
func forEachTarget(t *testing.T, fn func(t *testing.T, tt testTarget)) {
	t.Run("file", func(t *testing.T) { fn(t, newFileTarget(t)) })
	t.Run("s3", func(t *testing.T) { fn(t, newS3Target(t)) })
}

func testOptions() Options {
	return Options{
		Concurrency:   8,
		LockTTL:       30 * time.Second,
		LockClockSkew: -1,
		LockWait:      10 * time.Second,
		// Small packs, indexed every two, so that the test volumes of a few
		// MiB span many packs and index objects.
		PackSize:      testPackSize,
		indexEvery:    2,
		TargetOptions: TargetOptions{RequestTimeout: 10 * time.Second, ProbeTimeout: 10 * time.Second},
	}
}

func newFileTarget(t *testing.T) testTarget {
	dir := filepath.Join(t.TempDir(), "target")
	return testTarget{name: "file", url: (&url.URL{Scheme: "file", Path: dir}).String(), opts: testOptions(), dir: dir}
}

func newS3Target(t *testing.T) testTarget {
	srv := testutil.StartS3(t)
	o := testOptions()
	o.Endpoint = srv.Endpoint
	o.Region = srv.Region
	o.AccessKeyID = srv.AccessKey
	o.SecretAccessKey = srv.SecretKey
	return testTarget{name: "s3", url: srv.URL("cairn/prod"), opts: o, s3: srv,
		dir: filepath.Join(srv.Dir, srv.Bucket, "cairn", "prod")}
}

func (tt testTarget) open(t *testing.T, mod ...func(*Options)) *Store {
	t.Helper()
	o := tt.opts
	for _, m := range mod {
		m(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, tt.url, o)
	require.NoError(t, err)
	return s
}

// memImage is an in-memory volume image: a Source and a Sink (with Trim).
type memImage struct {
	mu     sync.Mutex
	b      []byte
	delay  time.Duration // per ReadAt, to make backups slow for fault tests
	hold   func()        // called before each ReadAt, to stop a backup at a chosen point
	writes int
	trims  int
}

func newMemImage(size int) *memImage { return &memImage{b: make([]byte, size)} }

func (m *memImage) Size() int64 { return int64(len(m.b)) }

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	if m.delay > 0 {
		time.Sleep(m.delay)
	}
	if m.hold != nil {
		m.hold()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.b[off:]), nil
}

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.writes++
	return copy(m.b[off:], p), nil
}

func (m *memImage) Trim(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.trims++
	clear(m.b[off : off+n])
	return nil
}

func (m *memImage) clone() *memImage { return &memImage{b: bytes.Clone(m.b)} }

const loremText = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. "

// fillMixed fills an image with a mix of random data, zeros and text, the
// shape of a real filesystem image.
func fillMixed(m *memImage, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for off := 0; off < len(m.b); off += testBlockSize {
		blk := m.b[off:min(off+testBlockSize, len(m.b))]
		switch r.IntN(4) {
		case 0: // zeros
			clear(blk)
		case 1: // text
			for i := 0; i < len(blk); {
				i += copy(blk[i:], loremText)
			}
			copy(blk, []byte{byte(seed), byte(off), byte(off >> 8), byte(off >> 16)})
		default: // random
			fillRandom(r, blk)
		}
	}
}

func fillRandom(r *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

// mutate overwrites n random ranges and returns them as extents.
func mutate(m *memImage, seed uint64, n int) []Extent {
	r := rand.New(rand.NewPCG(seed, 7))
	var ext []Extent
	for i := 0; i < n; i++ {
		off := r.IntN(len(m.b) - 8192)
		l := 1 + r.IntN(8192)
		fillRandom(r, m.b[off:off+l-l%8])
		ext = append(ext, Extent{Offset: int64(off), Length: int64(l)})
	}
	return ext
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// objectKeys lists every object under the target (through the Target).
func objectKeys(t *testing.T, s *Store) []string {
	var keys []string
	require.NoError(t, s.t.List(context.Background(), "", func(o ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}))
	return keys
}

func readAllFiles(t *testing.T, dir string) map[string][]byte {
	out := map[string][]byte{}
	require.NoError(t, filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = b
		return err
	}))
	return out
}

// firstBlock returns the first non-zero block of a backup.
func firstBlock(t *testing.T, s *Store, volume, backup string) BlockID {
	t.Helper()
	m, err := s.ReadManifest(ctxT(t), volume, backup)
	require.NoError(t, err)
	for _, id := range m.Blocks {
		if !id.IsZero() {
			return id
		}
	}
	t.Fatal("backup has no stored block")
	return BlockID{}
}

// damageRecord flips bytes inside the stored record of one block, in its
// pack, through the target.
func damageRecord(t *testing.T, s *Store, id BlockID) {
	t.Helper()
	ctx := ctxT(t)
	key, off, n, err := s.BlockLocation(ctx, id)
	require.NoError(t, err)
	obj, err := s.t.Get(ctx, key)
	require.NoError(t, err)
	obj[off+n/2] ^= 0xff
	obj[off+n-1] ^= 0x01
	require.NoError(t, s.t.Put(ctx, key, obj))
}

// keysUnder lists the object keys under prefix.
func keysUnder(t *testing.T, s *Store, prefix string) []string {
	var keys []string
	require.NoError(t, s.t.List(context.Background(), prefix, func(o ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}))
	return keys
}
