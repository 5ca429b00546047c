// Package engine is Cairn's per-volume engine: it serves one volume to its
// user (through a frontend, engine/nbd or engine/fuse) and synchronously
// replicates it to the volume's replicas (package replica).
//
//	frontend (NBD / FUSE)          engine.Volume                replicas
//	  read  ------------------->  healthiest (local first) --> R1
//	  write ------------------->  every healthy + rebuilding -> R1 R2 R3
//	  flush ------------------->  every healthy + rebuilding -> fdatasync
//
// # Replication
//
// A write, trim or write-zeroes goes to every healthy replica in parallel and
// is acknowledged when all of them have it. Reads go to one healthy replica:
// a local one (unix socket) first, otherwise the one with the fewest reads in
// flight; a failed read is retried on another replica. Overlapping
// mutations are serialised by striped 64 KiB range locks held until every
// replica answered: replicas execute concurrent requests in any order, and
// without the locks two overlapping writes in flight could land in
// different orders on different replicas.
//
// # I/O path
//
// The I/O path is bound by syscalls and thread wakeups (profiled with perf
// on 2 vCPUs: before this design, goroutine stack growth, one writev per
// replica request and per-request contexts and channels were half of the
// engine's CPU). So a frontend request costs no goroutine of its own:
//
//	NBD reader --Submit--> fanout (RLock, range locks) --legs--> wire.Conn queue per replica
//	                                 writer goroutine: one writev for everything queued
//	NBD writer <--Done---- last leg  <--------- reader goroutine: bufio, completes legs
//	(one flush per burst of replies)
//
// Volume.Submit (AsyncBackend) takes that path when every member is
// healthy; rebuilds, resyncs, failures being handled and requests above
// replica.MaxIO take the synchronous path on a goroutine. A Replica holds
// two replica.Client connections, both on the protocol's one client
// implementation (replica/wire.Conn): one for I/O, whose legs the fast
// path submits without waiting and which fails when a request waits
// longer than Config.IOTimeout (one watchdog per connection, not a timer
// per request), and one for control operations, which may run long
// (rebuild copies) and are bounded by their contexts. The control
// endpoint's HTTP API is package engine/control.
//
// # Failure and generations
//
// Every replica stores a durable generation number. At Open the engine reads
// every replica's generation and size: a replica of another size is refused
// with the reason, one that is unreachable is failed, one with an older
// generation (or an unfinished rebuild) is stale. Only the newest generation's
// replicas are used, and the engine at once stores generation+1 on them, so
// a replica left out now is older from then on.
//
// A replica whose I/O errors or exceeds Config.IOTimeout is dropped: the I/O
// that saw the failure takes the I/O barrier, stores a new generation on the
// survivors and only then is acknowledged. A replica that missed a write can
// therefore never be chosen as newest after a restart. I/O continues while one
// healthy replica remains; after that the volume is faulted and I/O fails.
//
// A replica that answers, but persistently slower than the others (a slow
// link or disk), is dropped the same way by Config.SlowReplica
// (SlowPolicy): by default when the moving average of its mutation
// latency is at least 250ms and more than 5 times the fastest other
// healthy replica's for 10s. Every mutation waits for every replica, so
// this bounds how long one slow replica sets the volume's pace, and it
// goes before its queue reaches the I/O timeout (no timeout storm).
// RunAutoRebuild takes it back after a hold-off that doubles with each
// drop for slowness.
//
// # Crash consistency
//
// The generation is odd while an engine has the volume open and even after
// a clean Close (flush on every replica, then generation+1). An Open that
// finds an odd newest generation resyncs: one newest replica serves reads,
// the others take writes and are compared with it and repaired, chunk by
// chunk under the range locks, while I/O continues (resync.go): over the
// regions the replicas tracked as written since the session began (the
// tracking survives replica restarts, replica.cbt), or, when a replica
// cannot tell (its machine crashed while it was open, or it was reverted
// or rebuilt since), over the union of their head extents (only heads can
// differ).
//
// # I/O barrier
//
// I/O holds Volume.mu shared while it talks to replicas. Membership changes
// (drop, rebuild start and promotion), snapshot and revert hold it exclusively:
// they wait for in-flight I/O and hold new I/O back, so every replica sees the
// same prefix of the write stream at that point.
//
// # Snapshots
//
// Snapshot flushes and snapshots every healthy replica under the barrier with
// the same name and a random uid label (SnapshotUIDLabel). While a rebuild
// copies layers the rebuilding replica takes the snapshot too (above the
// layers it receives), so snapshot schedules keep running during long
// rebuilds; other control operations wait for the rebuild. Revert needs the
// volume detached (no NBD client, FUSE file not open); Remove coalesces the
// layer on every replica while I/O continues.
//
// # Rebuild
//
// A new or returning replica is rebuilt while I/O continues (Volume.Rebuild,
// or RunAutoRebuild for replicas that come back).
//
// A replica that returns with the volume's snapshot chain (no snapshot was
// taken without it) is caught up instead: under the barrier a healthy
// source reports the regions changed since the generation the replica
// stored (its change tracking covers every write issued since, including
// those in flight when the replica left), the replica joins as a resyncing
// member that takes every write, and only those regions are compared and
// repaired under the range locks, as after an unclean shutdown
// (RebuildResult.CaughtUp). Otherwise, or when the source does not track
// that far back (more generations passed than it keeps, or its machine
// crashed), the layers are rebuilt:
//
//  1. Barrier: flush and snapshot the healthy replicas (a "cairn-rebuild-"
//     snapshot freezes the head); the target keeps the snapshot layers it
//     shares with the source (same name and uid, from the bottom of the chain)
//     and opens empty incomplete layers for the others plus an empty head;
//     from now on it receives every write as a write-only member.
//  2. The allocated extents of each missing layer are copied from the
//     source's immutable layer into the target's incomplete layer, then the
//     layer is committed. The target pulls them from the source itself
//     (replica PullLayer, 256 MiB windows for progress): the data crosses
//     the network once and never the engine. Where the target cannot reach
//     the source at the address the engine uses (a node-local unix socket)
//     the engine relays them (RebuildResult.Relayed). Live writes only touch the target's head, which
//     wins over the layers below, so the copy can never overwrite them.
//  3. Barrier: flush the target, store the volume's generation on it, make it
//     healthy. The newest rebuild snapshot stays, so a replica that drops
//     out later copies only newer layers when it returns; once every member
//     is healthy the older ones are removed everywhere (on the replicas the
//     smaller of two neighbouring layers is merged into the larger one).
//
// The source reads layers with O_DIRECT (a rebuild streams cold data once;
// through the page cache it cost more CPU than the copy and evicted the
// volume's working set).
//
// A rebuilding replica takes only block-aligned writes (it cannot
// read-modify-write a partial block whose old data has not arrived yet). The
// engine sends it the aligned equivalent of an unaligned write: the partial
// edge blocks are read back from a healthy replica after the write and sent
// whole. The range locks keep two writes sharing a block from interleaving
// those steps (Longhorn #4354, #13139 were this class of bug). A relayed
// copy sends each 1 MiB span's extents in one vectored WriteLayerExtents.
//
// # Growing
//
// Volume.Grow (POST /v1/size) grows every replica that takes writes under
// the barrier, dropping one that fails, and only then raises the size I/O
// is checked against. A replica that was away grows when it rejoins
// (rebuild or catch-up, under the barrier); Open grows replicas smaller
// than the volume and takes a newest replica's larger size when the
// configured size lags behind a grow. The FUSE file's size follows at once
// (SetGrowHook invalidates the kernel's cached attributes); a loop device
// on it needs fuse.RefreshLoopCapacity. NBD tells each new connection the
// size at its handshake; the protocol has no way to resize a connected
// export, so a connected client (the kernel's nbd device) keeps its size
// until it reconnects.
//
// # Control and metrics
//
// control.Server (package engine/control) serves status, snapshots, revert, add/remove replica and
// Prometheus metrics (Metrics: per-volume operations, bytes, errors, latency
// histograms, replica modes, generation, rebuild bytes) over HTTP on a unix
// socket or TCP. Package engine/daemon wires volume, frontend and control
// endpoint into the `cairn engine` process.
package engine
