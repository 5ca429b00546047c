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
//	packs/<p0p1>/<pack id>                      block records followed by a trailer (see Packs)
//	index/<random hex>                          where the records of some packs are (envelope 'I')
//	volumes/<volume>/catalogue                  complete backups of the volume (envelope 'C')
//	volumes/<volume>/backups/<backup>.manifest  every block of the volume at one backup (envelope 'M')
//	locks/<lock id>.json                        lock objects with expiry (JSON)
//	pins/<volume>/<backup>/<holder>.json        leases on a backup a DR standby still needs (JSON, see pin.go)
//	probe/<random hex>                          written, read back and deleted at once by the
//	                                            BackupTarget controller's probe (never by a read-only user)
//
// Nothing else is written (the file target's in-flight ".tmp-*" files are
// invisible to listing and removed by GC). Listing a volume's backups
// reads one object, its catalogue; restoring reads the manifest, the index
// (one listing of index/ and the index objects this process has not read
// yet) and byte ranges of the packs holding the blocks it needs. Only GC
// and verify --existence-only list packs/.
//
// # Blocks and ids
//
// A volume is cut into fixed-size blocks (2 MiB by default, a multiple of
// 4 KiB from 4 KiB to 64 MiB, fixed per backup; the last block may be
// shorter). A block's id is BLAKE3-256 of its plaintext, or, in an
// encrypted store, keyed BLAKE3-256 under a key derived from the
// encryption key, so ids reveal nothing about content to someone without
// the key. (BLAKE3 rather than SHA-256: three times faster here, and every
// block is hashed on backup and again on restore.) Identical blocks of any
// volume are stored once (two backups running at once may both store a new
// block; the index then locates it at one record, and the other is garbage
// that collection removes with its pack or by repacking it).
// All-zero blocks are never stored: their id in a manifest is 32 zero
// bytes.
//
// # Packs
//
// A block is stored as a record, an envelope of kind 'B' bound to its
// block id, and records are concatenated into packs of about
// Options.PackSize (32 MiB by default; a pack is closed once its records
// reach it, so about 32 objects per GiB of incompressible data). A pack
// ends with a trailer that lists its own records:
//
//	+----------+----------+-----+----------+-------------------+----------+
//	| record 0 | record 1 | ... | record n | trailer envelope  | uint32   |
//	| ('B')    | ('B')    |     | ('B')    | ('P', pack list)  | trailer  |
//	|          |          |     |          |                   | length BE|
//	+----------+----------+-----+----------+-------------------+----------+
//
// A pack list (the payload of a trailer and of an index object) is:
// uvarint pack count, then per pack its 16-byte id, uvarint object size,
// uvarint record count and per record the 32-byte block id and uvarints
// offset, stored length and plaintext length, records by offset. The
// trailer is bound to the pack's key; the trailer's pack list gives the
// offset where the trailer starts as the pack's size.
//
// Index objects ('I', bound to their key) list packs and their records.
// A backup writes one for every 64 packs it stores and one for the rest
// before it commits (concurrent backups hold "blocks" shared and write
// packs and index objects under fresh random names, so they never touch
// each other's objects); GC rewrites the ones that list packs it removes and
// consolidates the index when there are more than 16 objects. Readers load
// every index object (a process keeps the ones it has read, as an index
// object is never rewritten in place: a new one gets a new key), about
// 100 bytes of memory per stored block. The trailers make packs
// self-describing: GC adopts a pack no index lists when its trailer shows
// a referenced block the index lacks (a lost index object), and deletes it
// otherwise.
//
// Restore, incremental restore, verify and the DR standby's apply read
// ranges of packs (an S3 Range GET, a file ReadAt): the records they need,
// adjacent ones (gaps up to 64 KiB) in one request of at most 8 MiB (or
// one record of the largest size), packs in the order the volume first
// uses them.
//
// # Envelope (records, trailers, index objects, manifests, catalogues)
//
//	offset size
//	0      4    magic "CAIR"
//	4      1    kind: 'B' block record, 'P' pack trailer, 'I' index,
//	            'M' manifest, 'C' catalogue
//	5      1    format version (2)
//	6      1    compression of the body: 0 none, 1 zstd, 2 lz4 block
//	7      1    flags: bit 0 = encrypted
//	8      8    plaintext payload length, big endian
//	16     12   AES-GCM nonce (encrypted only)
//	...         body: compressed payload; if encrypted, AES-256-GCM sealed
//	            with additional data = the 16 header bytes + the object's
//	            identity (the 32-byte block id for records, the object key
//	            for trailers (the pack's), index objects, manifests and
//	            catalogues), so objects can be neither edited nor swapped
//	            undetected; a record is bound to its block, not its pack,
//	            so GC copies records between packs as stored
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
// read as generation 0, which proves nothing.
//
// # Format versions
//
// Version 2 (this one) stores blocks in packs. Version 1, unreleased,
// stored one object per block under blocks/; this build refuses a target
// whose cairn-target.json says version 1 with ErrFormat saying so (back up
// into a new target), and any object whose envelope carries another
// version.
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
//   - pack lists (index objects, trailers): every count is checked
//     against the bytes that follow before anything is allocated; records
//     lie inside their pack, by offset, without overlap; a record is at
//     most the worst compression bound of a 64 MiB block plus 44 bytes of
//     envelope and its plaintext at most 64 MiB; a restore decodes a
//     record only into its backup's block size;
//   - objects: an index object or trailer at most 128 MiB of payload (GC
//     writes index objects of at most 2^20 records); a manifest at most a
//     1 MiB header plus its ids; a catalogue 64 MiB; cairn-target.json and
//     locks 1 MiB. A larger object (a file's size, an S3 Content-Length) is
//     ErrObjectTooLarge before it is read, and S3 bodies are read through a
//     limit, so a missing or lying length cannot make them read more. Packs
//     are never read whole: a range read takes exactly the bytes the index
//     names, and a pack shorter than that is ErrCorrupt for its blocks;
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
//   - "blocks": guards the packs and the index. Backup, restore and
//     verify hold it shared (backups store packs and index objects under
//     it); Delete's collection and GC hold it exclusive.
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
// Backup (holding "blocks" shared): load the index, read the blocks that
// changed since the base backup (from a replica diff, or every block when
// the diff is unknown), hash them, and pack those neither the base nor the
// index has, with Concurrency workers each owning one block buffer and one
// record buffer; full packs are stored by the worker that filled them
// while the others go on (memory ≈ 2 × Concurrency × block size + 3 ×
// PackSize). Every 64 packs, and once more when all are stored, an index
// object lists them. Then, under the volume lock, write the manifest, then
// add the catalogue entry. A crash at any point leaves at most packs no
// manifest references (indexed or not: a pack is one atomic put, and a
// pack no index lists is used by no reader) and an unlisted manifest: a
// retry reuses the blocks of the indexed packs, GC removes the rest.
//
// Restore (holding "blocks" shared) validates the catalogue entry and the
// manifest against each other, loads the index and checks that every
// block it needs is in it, then fetches each distinct block once with
// range reads (see Packs), verifies it and writes it at every offset that
// uses it;
// the ranges to write are preallocated first; zero blocks are trimmed (or
// skipped on a fresh sink, where only the non-zero pages of each block are
// written). Incremental restore writes only the blocks whose id
// differs from the backup the sink already holds.
//
// Delete removes the catalogue entry first (the backup stops being
// restorable), then under "blocks" exclusive collects (below), then
// removes the manifest. If a backup or restore holds the lock beyond
// LockWait, collection is deferred to the next GC.
//
// Collection finds the records referenced by a listed manifest of any
// volume (a block stored twice is referenced at the record the index
// locates it at) and, per pack: a pack with no referenced record is
// deleted; a pack whose referenced records are less than half of its
// record bytes is mostly garbage and is repacked: its referenced records
// are read, verified and copied as stored into new packs (a pack with one
// that fails verification is left as it is, and counted); other packs
// stay. Then the index objects listing a removed pack are replaced by one
// listing their other packs and the new ones, and only then are the old
// index objects and the old packs deleted, so at every step each
// referenced block is in an indexed pack. GC (exclusive) also lists
// packs/ and reads the trailers of packs no index lists: adopts those
// holding a referenced block the index lacks, deletes the rest (from
// interrupted backups), keeps any whose trailer cannot be read; it
// consolidates an index of more than 16 objects and removes every
// unlisted manifest.
//
// # Consistency assumptions
//
// Targets provide atomic puts and read-after-write consistency for get,
// head and list (AWS S3 and the S3-compatible servers Cairn is tested
// with, and the file target, which writes temp → fsync → rename → fsync
// directory). A read-only store (a DR site) writes no locks; a block
// collected or repacked under it (its pack gone, or its index object
// replaced after it was listed) makes the restore read the index again
// and try once more; if the block is still missing the restore fails
// cleanly with ErrMissingBlock and is retried later against a newer
// backup.
package backupstore
