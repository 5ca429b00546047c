// Package replica stores one copy of a Cairn volume and serves it over an
// authenticated binary protocol.
//
// # On-disk format
//
// A replica is a directory:
//
//	replica.meta            chain metadata (two copies of framed JSON, CRC32C)
//	replica.lock            flock(2): one process per directory
//	layer-<id>.img  ...     one sparse file per layer, volume-sized
//
//	 position:   1            2                 n
//	           +----------+ +----------+     +----------+
//	           | snap-a   | | snap-b   | ... |  head    |  <- writes
//	           +----------+ +----------+     +----------+
//	 block b:   data         hole             hole         => read from snap-a
//	 block c:   data         data             data         => read from head
//
// Every layer file has the full volume size; a block (4 KiB) a layer holds
// is allocated in its file at the block's own offset, a block it does not
// hold is a hole. A read of block b is served by the newest layer that
// holds b, or is zeroes when none does. Writes only ever go to the head;
// snapshot layers are immutable (except when a removed neighbour is
// coalesced into them, which never changes what they read).
//
// replica.meta is the single source of truth for the chain: size, block
// size, generation and, oldest first, one record per layer (file id,
// snapshot name, labels, creation time, stored checksum, incomplete flag).
// Keeping all layer records in one file makes every chain change (snapshot,
// revert, remove, rebuild) one atomic commit. The record is a frame from
// internal/durable: magic "CAIRNRM1", version, payload length and a CRC32C
// over all of it, with a JSON payload. The file holds two copies, like
// bbolt's two meta pages:
//
//	offset 0            S                   2S
//	       +------------+-------------------+
//	       | slot 0     | slot 1            |   S = slotSize, a power of
//	       | frame, pad | frame, pad        |   two >= 64 KiB, in the JSON
//	       +------------+-------------------+
//
// A commit overwrites slot 0 with the new frame and fdatasyncs it (the
// commit point), then copies it to slot 1 in the background; the next
// commit first waits for that copy (and redoes it if it failed). So at
// rest both slots hold the current state, and between commits slot 1 holds
// the previous or the current one. Open reads slot 0, or slot 1 when slot
// 0 does not verify: a crash tearing slot 0 leaves slot 1 with the state
// before the commit that never returned, a crash tearing slot 1 leaves
// slot 0 with the current one, and damage to one slot at rest loses
// nothing. Both slots unreadable (or a file of another size, e.g.
// truncated) and Open refuses with ErrCorrupt naming the file; Scrub
// fails while one slot is damaged (the next commit rewrites both). A
// commit is thus one overwrite of blocks the file already owns plus one
// fdatasync: no new file, no rename, no directory fsync, so no filesystem
// journal commit, whose latency on a busy disk is tens of milliseconds; and
// it needs no free space. Only when the metadata outgrows a slot is the
// file rewritten whole (twice the size: temp file, fdatasync, rename,
// fsync directory), as is a file from an earlier version holding a single
// frame (still read). Open refuses a missing layer file or an unknown
// version with ErrCorrupt and the path in the message, and deletes layer
// and temp files the metadata does not reference (left by a crash between
// creating a file and committing the metadata; kept when a slot was
// unreadable, as the other may be one commit old).
//
// A pending head merge (see RemoveSnapshot below) adds "mergeFrom": the
// id of a former head whose blocks must still be copied into the head;
// such a file is written with version 2 so older binaries refuse it rather
// than lose that data, and Open finishes the merge before serving. A
// pending merge of a snapshot into its parent also has "mergeInto" (the id
// of the layer receiving the copy instead of the head), version 3.
//
// RemoveSnapshot keeps every remaining view identical in one of two ways.
// Copy-up (online, O(snapshot data)): the removed layer's blocks its child
// lacks are copied into the child, then the layer is dropped. Merge-down
// (O(head data)), chosen when the child is the head, the head holds less
// data than the snapshot, no reader has the snapshot open and there is
// room: commit the chain with the snapshot's file as the new head and
// mergeFrom = old head; copy the old head's allocated blocks into it
// while writes continue to the old head (under the block-range locks,
// noting the 64 KiB regions written meanwhile) and fdatasync; then, with
// I/O paused, copy the regions written meanwhile, fdatasync, commit
// without mergeFrom, switch and delete the old head. I/O pauses only for
// what was written during the copy. When the child is itself a snapshot
// holding less data than the removed one, it is merged down the same way
// without any pause (it is immutable): the removed snapshot's file takes
// the child's place, name and labels (mergeFrom = child, mergeInto = that
// file). This is how the engine drops its older rebuild snapshots cheaply.
//
// Durability: WriteAt goes to the page cache (in pwrites of at most 64
// KiB: the kernel sizes a new page-cache folio by the write, and on ext4 a
// small overwrite costs time in proportion to the folio it lands in);
// Flush is fdatasync of the
// head, the only layer with unsynced data (skipped when nothing changed
// since the last one). Snapshot syncs the head before committing the
// metadata that freezes it, so a snapshot never references data that
// could be lost; its new head file is created ahead of time in the
// background (an unreferenced spare that Open deletes after a crash), so
// a snapshot after a Flush costs one metadata commit. Received (rebuild)
// layers are synced by CommitLayer before being marked complete. Tests
// simulate power loss by putting back the pre-sync content of a random
// half of the blocks written since each file's last fdatasync
// (failpoint.go).
//
// # Growing
//
// Grow raises the volume size online (never lowers it: ErrShrink). It
// records each snapshot's own size in its layer record ("size"; absent
// means the volume's size), commits the metadata with the new size (the
// switch: a crash before it leaves the old size, after it the new one),
// then extends every layer file with a hole and the index and
// changed-block bitmaps to the new range, with I/O paused. Open extends
// layer files shorter than the volume, which completes a grow cut short
// after its commit. So every layer file still has the full volume size;
// an older snapshot's layer holds no data past its own size, so the new
// range reads as zeroes in every view until written, its checksum (over
// allocated blocks) is unchanged, and OpenSnapshot reads it at its own
// size. Revert keeps the current size.
//
// # Layer index
//
// At open, the allocated extents of every layer are read with
// SEEK_DATA/SEEK_HOLE bottom-up into an in-memory index mapping each block
// to the chain position of its owner. The index is a two-level run-length
// table (see index.go): 16 MiB chunks each holding a sorted array of
// 4-byte runs, lookups are a binary search in one chunk. Memory is
// proportional to fragmentation: ~26 MiB per TiB with 1% of the volume
// written as scattered 4 KiB blocks (the worst case for that amount of
// data), 3 MiB per TiB for an empty volume. A snapshot does not touch
// the index (the new head owns nothing yet).
//
// Partial-block writes whose block is owned by a lower layer are
// read-modify-written under striped block-range locks, so the head always
// holds whole blocks. Trim and WriteZeroes punch holes where no lower
// layer has data and write zero blocks where one does (a hole would
// expose the older data). ENOSPC surfaces as ErrNoSpace; a metadata
// commit only overwrites blocks replica.meta already owns (the other slot
// keeping a good copy), so a full disk neither fails nor corrupts it.
//
// # Generation
//
// The generation is a number in replica.meta that the engine raises with
// SetGeneration whenever replica membership changes. It never decreases.
// After a restart the engine compares generations and never picks a
// replica with a lower one as the source of truth.
//
// # Changed-block tracking
//
// SetGeneration(g) also starts a bitmap (one bit per 64 KiB region, 2 MiB
// per TiB) of the regions the head changes from then on; the newest four
// are kept, plus the session's (the one started when the generation went
// from even, a clean close, to odd). ChangedSince(g) returns the regions of
// the newest bitmap started at or before g: a superset of what a replica
// that left at generation g missed, so it can catch up by copying those
// regions of the head view, without a rebuild snapshot; and after an
// unclean engine stop the engine compares only the session's regions.
//
// The bitmaps persist in replica.cbt, so both stay proportional to what
// changed across replica restarts:
//
//	0        4 KiB     8 KiB              8 KiB + S        8 KiB + 5S
//	+--------+---------+------------------+-- ... ---------+
//	| hdr A  | hdr B   | slot 0 bitmap    | slots 1..4     |
//	+--------+---------+------------------+-- ... ---------+
//
// A header is a durable frame (magic "CAIRNCB1", CRC32C) with JSON: a
// sequence number, the volume size the slots are laid out for, the
// trackers (generation -> slot), the session generation, the boot id of
// the process that has the file open (/proc/sys/kernel/random/boot_id)
// and whether it is open. Commits alternate between the copies and
// fdatasync; Open takes the valid copy with the higher sequence. A slot
// (S = bitmap size rounded up to 4 KiB) holds one bitmap as little-endian
// 64-bit words.
//
// Crash safety: a region's bit is written to the file (pwrite of its
// word, under a lock so the file's words only gain bits) before the bit is
// set in memory and before the write, trim or zeroing of the head that
// needs it is issued; a bit already set in memory is therefore in the
// file. The cost is one 8-byte pwrite the first time a tracker sees a
// region; every later write finds its bits set with one atomic load. A
// process that dies (SIGKILL, panic) leaves every word it wrote in the page
// cache ahead of the data, so the bitmaps reopened in the same boot
// report every change that reached the head, and may report more (a bit
// set for a write that never happened), never less. Close fdatasyncs the
// file and marks it closed; a file left open by a process of an earlier
// boot (a machine crash may have lost words the data outlived) is not
// trusted: its trackers are dropped and ChangedSince reports ErrNotFound,
// so the engine falls back to comparing whole heads or copying layers. The
// file is allocated in full when created, so recording a change never
// needs free space; if it cannot be opened or created, Open deletes it and
// keeps the trackers in memory only. A new tracker is committed before its generation is stored (Open drops
// trackers newer than the stored generation); Revert and ResetForRebuild
// commit an empty tracker list before replacing the head; Grow rewrites the
// file for the new size (temp file, rename) before writes can reach the
// new range. The engine must raise the generation before acknowledging any
// write a departed replica missed.
//
// # Protocol
//
// The server speaks the replica protocol of package replica/wire, which
// describes the framing, handshake, opcodes and limits; Client is its
// client. The payload formats of the operations:
//
// I/O ops: Read (1, reply payload = data), Write (2, payload = data),
// Flush (3), Trim (4) and WriteZeroes (5) (offset/length), Ping (6).
// Control ops take and return JSON: Info (16), SetGeneration (17, offset =
// generation), Grow (25, offset = new size), Snapshot (18), Revert (19),
// RemoveSnapshot (20), Checksum (22), Scrub (23); Diff (21), ChangedSince
// (24, JSON {"generation": g}) and LayerExtents (32) return binary extents
// (offset u64, length u64) for a window [offset, offset+length) of at most
// 1 GiB, which the client pages through. Rebuild: ReadLayer (33, payload
// = u8 name length + name), ResetForRebuild (34), WriteLayer (35, payload
// = name prefix + data), CommitLayer (36) and WriteLayerExtents (37), the
// vectored WriteLayer:
//
//	header length = n (extent count), offset = 0
//	payload = u8 name length | name | n x (offset u64, length u64) | data
//
// where data is the n extents' bytes back to back (every extent
// block-aligned). One frame carries up to MaxIO bytes of extents and data,
// so a sparse layer (4 KiB data / 4 KiB hole) moves ~1000 extents per
// request instead of one. The server reads this frame so that data starts
// page-aligned, and writes a large single extent with O_DIRECT (a rebuild
// streams to disk rather than ending in one long fdatasync).
//
// PullLayer (38, JSON {"name", "source"}, offset/length = range) makes the
// receiving replica copy a range of its incomplete layer from the replica
// at source itself: it dials source, authenticates with its own token
// (replicas of a volume share it), runs the CopyLayer loop below into its
// local layer and replies {"bytes": n}. ErrUnreachable (status 17) means
// it could not reach source; callers then copy through themselves.
//
// # Rebuild
//
// A new or returning replica T is rebuilt from a healthy replica S while
// the volume keeps taking writes. Only immutable layers are copied, so
// copying never races with live writes:
//
//  1. Engine pauses I/O, takes a snapshot (e.g. "rebuild-<n>") on every
//     healthy replica, so all data written so far is in immutable layers.
//  2. Still paused: keep = the longest prefix of T's snapshots that matches
//     S's by name (Info); receive = S's remaining snapshots. Call
//     T.ResetForRebuild(keep, receive): T drops everything else, creates
//     the receive layers empty and Incomplete below a new empty head.
//     (A snapshot's Checksum from S's Info, if present, makes CommitLayer
//     verify the copy.)
//  3. Engine adds T to the write set and resumes I/O. T's head gets every
//     new write. Writes to T must be block-aligned while Info().Rebuilding
//     (the engine reads the edges from a healthy replica); an unaligned
//     one fails with ErrUnaligned rather than merging stale data. Trim and
//     WriteZeroes write zero blocks on T while it rebuilds. T must not
//     serve reads yet.
//  4. For each receive layer, oldest first: T.PullLayer(name, S's
//     address, window) for each window of the volume, then T.CommitLayer
//     (fsync, checksum check, mark complete); or, when T cannot reach S,
//     CopyLayer(ctx, S, T, name, size, n) does the same through the
//     caller. Either streams S.LayerExtents + S.ReadLayer (spans, reading
//     through holes of up to 64 KiB; large aligned reads bypass S's page
//     cache) into T.WriteLayerExtents (frames of up to MaxIO bytes).
//     Blocks T's head already rewrote keep reading from the head.
//  5. When T.Info().Rebuilding is false its chain equals S's; the engine
//     marks it healthy, sets the generation on all replicas, and may
//     remove the rebuild snapshot on all of them.
//
// A returning replica copies only the layers it lacks (its kept prefix is
// not transferred). RemoveSnapshot and Revert are refused (ErrRebuilding)
// on a replica that is rebuilding; Snapshot is allowed and lands above the
// received layers, so the chains stay aligned.
package replica
