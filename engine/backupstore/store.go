package backupstore

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Defaults.
const (
	DefaultBlockSize = 2 << 20
	MinBlockSize     = 4 << 10
	MaxBlockSize     = 64 << 20
	DefaultLockTTL   = 2 * time.Minute
)

// Options configure a Store.
type Options struct {
	TargetOptions

	// Key is the client-side encryption key material (from a Secret), at
	// least 16 bytes. A target created with a key needs it for everything;
	// a target created without one refuses a key.
	Key []byte
	// ReadOnly opens the target without writing anything, not even lock
	// objects (a DR site reading the primary's target).
	ReadOnly bool
	// Concurrency is the number of blocks in flight (default
	// max(16, 2*GOMAXPROCS), at most 64): enough requests in flight to
	// hide object-store latency. Memory is bounded by about
	// 2 * Concurrency * block size plus three packs (PackSize) for a
	// backup, and max(4, Concurrency/2) range reads of at most 8 MiB (or
	// one record) plus a block each for a restore or verify.
	Concurrency int
	// ZstdLevel is the zstd encoder level (default SpeedFastest).
	ZstdLevel zstd.EncoderLevel
	// LockTTL is how long a lock object stays valid without a refresh
	// (default 2m); holders refresh at a third of it. A crashed holder's
	// lock is ignored after LockTTL + LockClockSkew.
	LockTTL time.Duration
	// LockClockSkew is the clock difference tolerated between lock holders
	// (default 30s; negative means none).
	LockClockSkew time.Duration
	// LockWait is how long an operation waits for a conflicting lock
	// before giving up with ErrLocked (default 1m).
	LockWait time.Duration
	// Holder names this process in lock objects (default host:pid).
	Holder string
	// PackSize is the size a pack object is closed at (default 32 MiB,
	// at most 1 GiB): blocks are stored as records in packs of about
	// this size. Larger packs mean fewer objects and more memory: a
	// writer holds up to three packs.
	PackSize int
	// indexEvery is how many packs a backup stores before it writes an
	// index object for them (default defaultIndexEvery; tests lower it).
	indexEvery int
	// ExpiryClock is the clock other holders' locks and pins are judged
	// expired by (default time.Now). Tests that simulate crashed holders
	// set a clock past the TTL instead of sleeping through it.
	ExpiryClock func() time.Time
}

// Store is a backup store in one target.
type Store struct {
	t      Target
	codec  *codec
	cfg    targetConfig
	opts   Options
	holder string

	idxMu sync.Mutex
	idx   *index // the index as last loaded (see loadIndex)
}

// targetConfigKey is the object describing the whole store.
const targetConfigKey = "cairn-target.json"

// targetConfig is the JSON content of cairn-target.json.
type targetConfig struct {
	FormatVersion int         `json:"formatVersion"`
	Kind          string      `json:"kind"`
	ID            string      `json:"id"`
	Created       time.Time   `json:"created"`
	BlockIDHash   string      `json:"blockIdHash"`
	Encryption    *encryption `json:"encryption,omitempty"`
}

type encryption struct {
	Algorithm string `json:"algorithm"`
	KDF       string `json:"kdf"`
	Salt      []byte `json:"salt"`
	KeyCheck  []byte `json:"keyCheck"`
}

const targetKind = "cairn-backup-target"

// Open opens (and, unless read-only, initialises) the backup store at
// rawURL (s3://bucket/prefix or file:///path).
func Open(ctx context.Context, rawURL string, opts Options) (*Store, error) {
	t, err := OpenTarget(ctx, rawURL, opts.TargetOptions)
	if err != nil {
		return nil, err
	}
	return OpenStore(ctx, t, opts)
}

// OpenStore opens the backup store in an already opened target.
func OpenStore(ctx context.Context, t Target, opts Options) (*Store, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = max(16, 2*runtime.GOMAXPROCS(0))
	}
	opts.Concurrency = min(opts.Concurrency, 64)
	if opts.ZstdLevel == 0 {
		opts.ZstdLevel = zstd.SpeedFastest
	}
	if opts.LockTTL <= 0 {
		opts.LockTTL = DefaultLockTTL
	}
	if opts.LockClockSkew == 0 {
		opts.LockClockSkew = 30 * time.Second
	} else if opts.LockClockSkew < 0 {
		opts.LockClockSkew = 0
	}
	if opts.LockWait <= 0 {
		opts.LockWait = time.Minute
	}
	if opts.PackSize <= 0 {
		opts.PackSize = DefaultPackSize
	}
	opts.PackSize = min(opts.PackSize, maxPackSize)
	if opts.indexEvery <= 0 {
		opts.indexEvery = defaultIndexEvery
	}
	if opts.ExpiryClock == nil {
		opts.ExpiryClock = time.Now
	}
	if opts.Holder == "" {
		host, _ := os.Hostname()
		opts.Holder = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if len(opts.Key) > 0 && len(opts.Key) < 16 {
		return nil, fmt.Errorf("backupstore: encryption key too short (%d bytes, need at least 16)", len(opts.Key))
	}
	s := &Store{t: t, opts: opts, holder: opts.Holder}
	cfg, err := s.loadOrInitConfig(ctx)
	if err != nil {
		return nil, err
	}
	s.cfg = cfg
	var idKey, encKey []byte
	switch {
	case cfg.Encryption != nil && len(opts.Key) == 0:
		return nil, fmt.Errorf("%w (%s)", ErrKeyRequired, t)
	case cfg.Encryption == nil && len(opts.Key) > 0:
		return nil, fmt.Errorf("%w (%s)", ErrNotEncrypted, t)
	case cfg.Encryption != nil:
		var check []byte
		idKey, encKey, check, err = deriveKeys(opts.Key, cfg.Encryption.Salt)
		if err != nil {
			return nil, err
		}
		if !hmac.Equal(keyCheck(check, cfg.ID), cfg.Encryption.KeyCheck) {
			return nil, fmt.Errorf("%w (%s)", ErrWrongKey, t)
		}
	}
	if s.codec, err = newCodec(idKey, encKey, opts.ZstdLevel); err != nil {
		return nil, err
	}
	return s, nil
}

func keyCheck(checkKey []byte, targetID string) []byte {
	m := hmac.New(sha256.New, checkKey)
	m.Write([]byte("cairn key check " + targetID))
	return m.Sum(nil)
}

func (s *Store) loadOrInitConfig(ctx context.Context) (targetConfig, error) {
	var cfg targetConfig
	b, err := getInto(ctx, s.t, targetConfigKey, nil, maxSmallObject)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &cfg); err != nil {
			return cfg, fmt.Errorf("%w: %s: %v", ErrFormat, targetConfigKey, err)
		}
		if cfg.Kind != targetKind {
			return cfg, fmt.Errorf("%w: %s: kind %q", ErrFormat, targetConfigKey, cfg.Kind)
		}
		if cfg.FormatVersion == 1 {
			return cfg, fmt.Errorf("%w: %s: format version 1, the unreleased format with one object per block, which this build "+
				"no longer reads (it reads format %d, blocks in pack objects): back up into a new target", ErrFormat, targetConfigKey, FormatVersion)
		}
		if cfg.FormatVersion != FormatVersion {
			return cfg, fmt.Errorf("%w: %s: format version %d (this build reads %d)", ErrFormat, targetConfigKey, cfg.FormatVersion, FormatVersion)
		}
		if want := map[bool]string{false: "blake3", true: "blake3-keyed"}[cfg.Encryption != nil]; cfg.BlockIDHash != want {
			return cfg, fmt.Errorf("%w: %s: block id hash %q", ErrFormat, targetConfigKey, cfg.BlockIDHash)
		}
		return cfg, nil
	case !errors.Is(err, ErrNotFound):
		return cfg, err
	case s.opts.ReadOnly:
		return cfg, fmt.Errorf("%w: %s", ErrNotInitialized, s.t)
	}
	// A new store: record its id, hash and encryption parameters.
	cfg = targetConfig{FormatVersion: FormatVersion, Kind: targetKind, ID: randomHex(16),
		Created: time.Now().UTC().Truncate(time.Second), BlockIDHash: "blake3"}
	if len(s.opts.Key) > 0 {
		salt := make([]byte, 32)
		if _, err := rand.Read(salt); err != nil {
			return cfg, err
		}
		_, _, check, err := deriveKeys(s.opts.Key, salt)
		if err != nil {
			return cfg, err
		}
		cfg.BlockIDHash = "blake3-keyed"
		cfg.Encryption = &encryption{Algorithm: "aes-256-gcm", KDF: "hkdf-sha256", Salt: salt, KeyCheck: keyCheck(check, cfg.ID)}
	}
	b, err = json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return cfg, err
	}
	if err := s.t.Put(ctx, targetConfigKey, b); err != nil {
		return cfg, err
	}
	// Re-read: if two processes initialised at once, both use the winner.
	b, err = getInto(ctx, s.t, targetConfigKey, nil, maxSmallObject)
	if err != nil {
		return cfg, err
	}
	var stored targetConfig
	if err := json.Unmarshal(b, &stored); err != nil {
		return cfg, fmt.Errorf("%w: %s: %v", ErrFormat, targetConfigKey, err)
	}
	return stored, nil
}

// Target returns the store's target.
func (s *Store) Target() Target { return s.t }

// Encrypted reports whether the store encrypts its objects.
func (s *Store) Encrypted() bool { return s.cfg.Encryption != nil }

// String returns the target URL.
func (s *Store) String() string { return s.t.String() }

func (s *Store) checkWritable() error {
	if s.opts.ReadOnly {
		return fmt.Errorf("%w: %s", ErrReadOnly, s.t)
	}
	return nil
}

// Object keys. See doc.go for the layout (packKey is in pack.go).
func catalogueKey(volume string) string { return "volumes/" + volume + "/catalogue" }

func manifestKey(volume, backup string) string {
	return "volumes/" + volume + "/backups/" + backup + ".manifest"
}

func lockKey(id string) string { return "locks/" + id + ".json" }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

func validName(what, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: %s %q (letters, digits, '.', '_', '-'; at most 253)", ErrInvalidName, what, name)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	const hexd = "0123456789abcdef"
	out := make([]byte, 2*n)
	for i, c := range b {
		out[2*i], out[2*i+1] = hexd[c>>4], hexd[c&15]
	}
	return string(out)
}

// newBackupID returns a sortable, unique backup id.
func newBackupID(now time.Time) string {
	return "b" + now.UTC().Format("20060102-150405.000") + "-" + randomHex(3)
}
