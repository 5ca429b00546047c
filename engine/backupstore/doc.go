// Package backupstore is Cairn's backup format and the code that writes,
// reads, verifies and collects it: content-addressed, deduplicated,
// compressed and optionally encrypted volume backups in an S3 bucket
// (s3://bucket/prefix, any S3-compatible endpoint) or a directory
// (file:///path).
//
// # Target layout
//
// Every key below is relative to the target root (the s3 prefix or the
// file directory):
//
//	cairn-target.json                          store descriptor (JSON)
//	blocks/<h0h1>/<h2h3>/<hex id>               one block per distinct content (envelope 'B')
//	volumes/<volume>/catalogue                  complete backups of the volume (envelope 'C')
//	volumes/<volume>/backups/<backup>.manifest  every block of the volume at one backup (envelope 'M')
//	locks/<lock id>.json                        lock objects with expiry (JSON)
//	pins/<volume>/<backup>/<holder>.json        leases on a backup a DR standby still needs (JSON, see pin.go)
//	probe/<random hex>                          written, read back and deleted at once by the
//	                                            BackupTarget controller's probe (never by a read-only user)
//
// Nothing else is written (the file target's in-flight ".tmp-*" files are
// invisible to listing and removed by GC). Listing a volume's backups
// reads one object, its catalogue; restoring reads the manifest and the
// blocks it names. Only GC lists blocks/.
//
// # Blocks and ids
//
// A volume is cut into fixed-size blocks (2 MiB by default, a multiple of
// 4 KiB from 4 KiB to 64 MiB, fixed per backup; the last block may be
// shorter). A block's id is BLAKE3-256 of its plaintext, or, in an
// encrypted store, keyed BLAKE3-256 under a key derived from the
// encryption key, so ids reveal nothing about content to someone without
// the key. (BLAKE3 rather than SHA-256: three times faster here, and every
// block is hashed on backup and again on restore.) Identical blocks of any volume are stored once. All-zero blocks
// are never stored: their id in a manifest is 32 zero bytes.
//
// # Envelope (blocks, manifests, catalogues)
//
//	offset size
//	0      4    magic "CAIR"
//	4      1    kind: 'B' block, 'M' manifest, 'C' catalogue
//	5      1    format version (1)
//	6      1    compression of the body: 0 none, 1 zstd, 2 lz4 block
//	7      1    flags: bit 0 = encrypted
//	8      8    plaintext payload length, big endian
//	16     12   AES-GCM nonce (encrypted only)
//	...         body: compressed payload; if encrypted, AES-256-GCM sealed
//	            with additional data = the 16 header bytes + the object's
//	            identity (the 32-byte block id for blocks, the object key
//	            for manifests and catalogues), so objects can be neither
//	            edited nor swapped undetected
//
// A block whose compressed form is not smaller is stored uncompressed
// (compression byte 0). Every read checks magic, kind and version, decrypts,
// decompresses to exactly the recorded length, and for blocks recomputes
// the id: a mismatch is ErrCorrupt naming the block (and, from restore and
// verify, the backups that reference it).
//
// # Manifest payload
//
//	uvarint  n
//	n bytes  JSON header: formatVersion, volume, backup, snapshot, parent,
//	         created, size, blockSize, blockCount, blockIdHash, labels,
//	         catalogueGeneration
//	32*blockCount  block ids in volume order (zero id = all-zero block)
//
// A manifest lists every block, so any backup restores alone without
// walking a chain of increments. (1 TiB at 2 MiB blocks: 16 MiB before
// compression.)
//
// # Catalogue payload
//
// JSON: formatVersion, volume, updated, generation, backups[] (id, snapshot, parent,
// created, completed, size, blockSize, compression, labels, block
// counts, bytes read and uploaded), oldest first by creation time (ids
// are b<yyyymmdd-hhmmss.mmm>-<random>, UTC). A backup exists for readers only once it
// is in the catalogue.
//
// # Generations and rollback
//
// A catalogue's generation counts its writes. A backup commits under the
// volume lock: it reads the catalogue (generation g), writes its manifest
// with catalogueGeneration g+1, then the catalogue at g+1 listing it.
// Readers list volumes/<volume>/backups/ and read the manifests the
// catalogue does not list: one newer than the catalogue proves that an
// older catalogue was put back (hiding newer backups), and list, restore,
// verify, backup and gc fail with ErrCatalogueRollback naming the volume
// and the backup, unless the volume lock is live (a commit in flight) or a
// re-read catalogue has caught up. A backup interrupted between its two
// writes leaves the same trace; `cairn backup gc --discard-uncommitted`
// removes such manifests once the operator knows that is the cause. Both
// fields are new in format version 1 and optional: objects without them
// read as generation 0, which proves nothing, so older targets stay
// readable and need no version bump.
//
// # Limits
//
// Nothing read from a target is trusted before it is checked, and nothing
// is allocated or preallocated from a field before it is validated:
//
//   - block size: a multiple of 4 KiB from 4 KiB to 64 MiB; size and
//     blockCount agree (blockCount = ceil(size / blockSize)); at most
//     MaxManifestBlocks (2^23) blocks; 32 bytes of ids per block; the block
//     id hash is the target's;
//   - a catalogue entry and its manifest agree on size, block size, block
//     and zero-block counts, snapshot, parent and creation time, else
//     ErrInconsistent; entries are well formed and listed once;
//   - objects: a block object at most the worst compression bound of its
//     backup's block size plus 44 bytes of envelope; a manifest at most a
//     1 MiB header plus its ids; a catalogue 64 MiB; cairn-target.json and
//     locks 1 MiB. A larger object (a file's size, an S3 Content-Length) is
//     ErrObjectTooLarge before it is read, and S3 bodies are read through a
//     limit, so a missing or lying length cannot make them read more;
//   - the recorded plaintext length of an envelope is bounded the same
//     way, and zstd decoders cannot grow past it.
//
// An S3 request that receives (or sends) no byte for the stall timeout
// (TargetOptions.StallTimeout, default 60s) fails with ErrStalled, so a
// server that trickles data cannot hold a backup or restore for ever.
//
// # Store descriptor (cairn-target.json)
//
// JSON, readable without the key: formatVersion, kind
// "cairn-backup-target", id, created, blockIdHash ("blake3" or
// "blake3-keyed") and, for encrypted stores, encryption {algorithm
// "aes-256-gcm", kdf "hkdf-sha256", salt, keyCheck}. keyCheck is an HMAC
// of the store id under a derived key: a wrong key is ErrWrongKey at Open,
// no key for an encrypted store is ErrKeyRequired, a key for a plain store
// is ErrNotEncrypted.
//
// # Locks
//
// A lock object is JSON: formatVersion, id, scope, exclusive, purpose,
// holder (host:pid), created, expires. Two scopes exist:
//
//   - "blocks": backup, restore and verify hold it shared; Delete's block
//     removal and GC hold it exclusive.
//   - "volume/<name>": held exclusive for a catalogue read-modify-write.
//
// To take a lock a process writes its lock object first and then lists
// locks/; if a live conflicting lock exists it deletes its own and retries
// after a random backoff (ErrLocked after Options.LockWait). Since every
// contender writes before it looks, two conflicting holders never both
// proceed. Holders rewrite their lock every TTL/3; a lock whose expiry
// (+ tolerated clock skew) passed is ignored and removed, so a crashed
// holder never blocks anyone forever. A holder that could not refresh in
// time aborts with ErrLockLost instead of committing.
//
// # Backup, restore, delete, GC
//
// Backup (holding "blocks" shared): read the blocks that changed since the
// base backup (from a replica diff, or every block when the diff is
// unknown), hash them, upload those neither the base nor the target has
// (existence check per new id), with Concurrency workers each owning one
// block buffer and one object buffer (memory ≈ 2 × Concurrency × block
// size). Then, under the volume lock, write the manifest, then add the
// catalogue entry. A crash
// at any point leaves at most unreferenced blocks and an unlisted
// manifest: a retry reuses the blocks, GC removes what stays unreferenced.
//
// Restore (holding "blocks" shared) validates the catalogue entry and the
// manifest against each other, then fetches each distinct block once, in
// volume order, verifies it and writes it at every offset that uses it;
// the ranges to write are preallocated first; zero blocks are trimmed (or
// skipped on a fresh sink, where only the non-zero pages of each block are
// written). Incremental restore writes only the blocks whose id
// differs from the backup the sink already holds.
//
// Delete removes the catalogue entry first (the backup stops being
// restorable), then under "blocks" exclusive removes the blocks no listed
// manifest of any volume references, then the manifest. If a backup or
// restore holds the lock beyond LockWait, block removal is deferred to the
// next GC. GC (exclusive) removes every unreferenced block and every
// unlisted manifest.
//
// # Consistency assumptions
//
// Targets provide atomic puts and read-after-write consistency for get,
// head and list (AWS S3 and the S3-compatible servers Cairn is tested
// with, and the file target, which writes temp → fsync → rename → fsync
// directory). A read-only store (a DR site) writes no locks; a block
// collected under it fails the restore cleanly with ErrMissingBlock and
// the restore is retried against a newer backup.
package backupstore
