package backupstore

import "errors"

// Sentinel errors. Callers match them with errors.Is; the wrapping error
// carries the details (object key, block id, backup id, target URL).
var (
	// ErrBadURL is returned for a target URL that cannot be parsed or lacks
	// a bucket/path.
	ErrBadURL = errors.New("backupstore: bad target url")
	// ErrUnsupportedScheme is returned for a target URL whose scheme is
	// neither s3:// nor file://.
	ErrUnsupportedScheme = errors.New("backupstore: unsupported target scheme")
	// ErrUnreachable is returned when the target's endpoint cannot be
	// reached (connection refused, DNS failure, timeout).
	ErrUnreachable = errors.New("backupstore: target unreachable")
	// ErrAccessDenied is returned when the target rejects the credentials.
	ErrAccessDenied = errors.New("backupstore: access denied by target (check credentials)")
	// ErrNoCredentials is returned when no S3 credentials were given and
	// none could be found in the environment.
	ErrNoCredentials = errors.New("backupstore: no usable S3 credentials (pass them from a Secret or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
	// ErrBucketNotFound is returned when the S3 bucket (or file target
	// directory) does not exist.
	ErrBucketNotFound = errors.New("backupstore: bucket not found")
	// ErrNotFound is returned by a Target for a missing object.
	ErrNotFound = errors.New("backupstore: object not found")
	// ErrReadOnly is returned when a write is attempted on a target opened
	// read-only.
	ErrReadOnly = errors.New("backupstore: target is read-only")
	// ErrNotInitialized is returned when a read-only open finds no
	// cairn-target.json in the target.
	ErrNotInitialized = errors.New("backupstore: target holds no cairn backup store")

	// ErrKeyRequired is returned when the target is encrypted and no key
	// was given.
	ErrKeyRequired = errors.New("backupstore: target is encrypted, an encryption key is required")
	// ErrWrongKey is returned when the given key does not match the key the
	// target was created with.
	ErrWrongKey = errors.New("backupstore: wrong encryption key for this target")
	// ErrNotEncrypted is returned when a key is given for a target that was
	// created without encryption.
	ErrNotEncrypted = errors.New("backupstore: key given but target is not encrypted")

	// ErrFormat is returned for an object with a bad magic, an unknown kind
	// or an unsupported format version.
	ErrFormat = errors.New("backupstore: unsupported or malformed object")
	// ErrCorrupt is returned when an object fails authentication,
	// decompression or its content hash.
	ErrCorrupt = errors.New("backupstore: corrupt object")
	// ErrMissingBlock is returned when a block a backup references is not in
	// the target.
	ErrMissingBlock = errors.New("backupstore: missing block")

	// ErrBackupNotFound is returned for a backup that is not listed complete
	// in its volume's catalogue.
	ErrBackupNotFound = errors.New("backupstore: backup not found")
	// ErrInvalidName is returned for a volume or backup name that is not a
	// safe object-key component.
	ErrInvalidName = errors.New("backupstore: invalid name")
	// ErrSizeMismatch is returned when a restore sink or incremental base
	// does not match the backup's volume size.
	ErrSizeMismatch = errors.New("backupstore: size mismatch")
	// ErrLocked is returned when a lock cannot be taken before the wait
	// deadline because another holder keeps a conflicting lock.
	ErrLocked = errors.New("backupstore: target is locked")
	// ErrPinned is returned by Delete for a backup a live pin holds (a DR
	// standby still needs it); it can be deleted once the pin is gone.
	ErrPinned = errors.New("backupstore: backup is pinned")
	// ErrLockLost is returned when a lock could not be refreshed before it
	// expired; the operation is aborted because its protection lapsed.
	ErrLockLost = errors.New("backupstore: lock lost")

	// ErrObjectTooLarge is returned when an object in the target is larger
	// than its kind may be (see doc.go, Limits); it is refused before it is
	// read whole.
	ErrObjectTooLarge = errors.New("backupstore: object too large")
	// ErrInconsistent is returned when a catalogue entry and its manifest,
	// or the fields of one of them, disagree (size, block size, block
	// count): the backup is refused rather than restored or verified.
	ErrInconsistent = errors.New("backupstore: inconsistent backup metadata")
	// ErrCatalogueRollback is returned when a volume's catalogue is older
	// than a manifest committed after it: the catalogue was replaced by an
	// earlier copy (hiding newer backups), or a backup was interrupted
	// between writing its manifest and its catalogue entry.
	ErrCatalogueRollback = errors.New("backupstore: catalogue rolled back")
	// ErrTargetFull is returned when the target has no room for an object
	// (a file target's file system is full or over quota). The backup
	// that hit it is not committed: nothing lists it, and GC removes the
	// blocks it stored.
	ErrTargetFull = errors.New("backupstore: backup target is full")
	// ErrStalled is returned when a target request made no progress (no
	// byte received) for longer than the stall timeout.
	ErrStalled = errors.New("backupstore: target stalled")
)
