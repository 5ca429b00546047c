package backupstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Target is the object store a backup store lives in. Keys are relative to
// the target's root (the URL's path or prefix) and use '/' separators.
// Implementations must give read-after-write consistency for Get, Exists
// and List (S3 does; the file target does).
type Target interface {
	// Get returns the whole object, or an error wrapping ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Put stores data under key atomically: readers see the old object, no
	// object, or all of data, never a prefix.
	Put(ctx context.Context, key string, data []byte) error
	// Exists reports whether key exists.
	Exists(ctx context.Context, key string) (bool, error)
	// List calls fn for every object whose key starts with prefix.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// String returns the target URL without credentials.
	String() string
}

// limitedGetter is implemented by targets that can read an object into a
// caller's buffer (so hot paths such as restore and verify do not allocate
// per block) and refuse an object larger than limit before reading it.
type limitedGetter interface {
	GetInto(ctx context.Context, key string, buf []byte, limit int64) ([]byte, error)
}

// rangeGetter is implemented by targets that can read part of an object
// (S3 Range GET, a file's ReadAt): restore and verify read the records
// they need out of a pack instead of the whole pack.
type rangeGetter interface {
	// GetRange reads exactly n bytes at off of key into buf (reused when
	// large enough). An object shorter than off+n is errShortObject.
	GetRange(ctx context.Context, key string, off, n int64, buf []byte) ([]byte, error)
}

// errShortObject is returned by GetRange when the object ends before the
// requested range does (a truncated pack, or an index that lies).
var errShortObject = errors.New("object shorter than the requested range")

// getRange reads n bytes at off of key. A target without GetRange is read
// whole (bounded by off+n) and sliced.
func getRange(ctx context.Context, t Target, key string, off, n int64, buf []byte) ([]byte, error) {
	if g, ok := t.(rangeGetter); ok {
		return g.GetRange(ctx, key, off, n, buf)
	}
	b, err := t.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) < off+n {
		return nil, fmt.Errorf("%w: %s is %d bytes, range ends at %d", errShortObject, key, len(b), off+n)
	}
	return append(buf[:0], b[off:off+n]...), nil
}

// getInto reads key into buf, refusing an object larger than limit with
// ErrObjectTooLarge. A target without GetInto is read whole first.
func getInto(ctx context.Context, t Target, key string, buf []byte, limit int64) ([]byte, error) {
	if g, ok := t.(limitedGetter); ok {
		return g.GetInto(ctx, key, buf, limit)
	}
	b, err := t.Get(ctx, key)
	if err == nil && int64(len(b)) > limit {
		return nil, tooLarge(key, int64(len(b)), limit)
	}
	return b, err
}

// tooLarge is the error for an object of size bytes where limit may be.
func tooLarge(key string, size, limit int64) error {
	return fmt.Errorf("%w: %s is %d bytes, at most %d allowed", ErrObjectTooLarge, key, size, limit)
}

// ObjectInfo describes one listed object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// TargetOptions configure how a target URL is opened.
type TargetOptions struct {
	// Region of the S3 bucket (default us-east-1).
	Region string
	// Endpoint of an S3-compatible server, e.g. http://127.0.0.1:7070.
	// Empty means AWS.
	Endpoint string
	// AccessKeyID, SecretAccessKey and SessionToken are the S3 credentials
	// (from a Secret's values). Empty means the SDK's default chain
	// (environment, shared config).
	AccessKeyID, SecretAccessKey, SessionToken string
	// CABundle is a PEM bundle of extra CAs trusted for the endpoint.
	CABundle []byte
	// VirtualHostStyle selects virtual-hosted-style addressing; the default
	// is path style, which every S3-compatible server supports.
	VirtualHostStyle bool
	// RequestTimeout bounds a single request attempt (default 60s); Open's
	// probe is bounded by ProbeTimeout (default 15s).
	RequestTimeout time.Duration
	ProbeTimeout   time.Duration
	// StallTimeout fails a request that receives no byte (headers or
	// body) and sends none for this long (default 60s), so a server that
	// trickles data cannot hold a backup or restore for ever.
	StallTimeout time.Duration
	// MaxAttempts is the number of attempts per request (default 3).
	MaxAttempts int
}

// OpenTarget opens a target URL: s3://bucket[/prefix] or file:///path. It
// probes the target (bucket exists, credentials accepted, endpoint
// reachable) and returns a clear error within ProbeTimeout.
func OpenTarget(ctx context.Context, rawURL string, opts TargetOptions) (Target, error) {
	shown := redactURL(rawURL)
	if strings.HasPrefix(rawURL, "s3://") && strings.Contains(rawURL, "@") {
		// Bucket names never hold '@'; a secret may hold '/', so do not
		// rely on the parser to find where userinfo ends.
		return nil, fmt.Errorf("%w: %q: credentials do not belong in the URL (pass them from a Secret or a credentials file)", ErrBadURL, shown)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: cannot be parsed", ErrBadURL, shown)
	}
	if opts.ProbeTimeout <= 0 {
		opts.ProbeTimeout = 15 * time.Second
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: %q: credentials do not belong in the URL (pass them from a Secret or a credentials file)", ErrBadURL, shown)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("%w: %q: file URLs take an absolute path (file:///path)", ErrBadURL, shown)
		}
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return nil, fmt.Errorf("%w: %q: missing absolute path", ErrBadURL, shown)
		}
		return openFileTarget(u.Path)
	case "s3":
		if u.Host == "" {
			return nil, fmt.Errorf("%w: %q: missing bucket (s3://bucket/prefix)", ErrBadURL, shown)
		}
		return openS3Target(ctx, u.Host, strings.Trim(u.Path, "/"), opts)
	case "":
		return nil, fmt.Errorf("%w: %q: missing scheme (want s3:// or file://)", ErrBadURL, shown)
	}
	return nil, fmt.Errorf("%w: %q (want s3:// or file://)", ErrUnsupportedScheme, u.Scheme)
}

// redactURL returns rawURL with everything between the scheme and the
// last '@' (userinfo such as KEY:SECRET@, whose secret may itself hold
// '/') replaced by "REDACTED", found textually so that even a URL that
// does not parse never has its credentials repeated.
func redactURL(rawURL string) string {
	rest, scheme := rawURL, ""
	if i := strings.Index(rawURL, "://"); i >= 0 {
		scheme, rest = rawURL[:i+3], rawURL[i+3:]
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return rawURL
	}
	return scheme + "REDACTED" + rest[at:]
}
