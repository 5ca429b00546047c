// Package node is Cairn's node agent (`cairn node --name NAME --data-dir DIR`):
// it registers the node as a CairnNode, heartbeats through a Lease, and turns
// the Replica and Engine objects assigned to the node into supervised child
// processes (`cairn replica`, `cairn engine`), one per instance.
//
// # Contract with the manager
//
// The manager (controllers/) creates the objects below; the agent of the node
// named in spec.nodeID runs them and writes only status and its finalizers.
//
// Token. Secret cairn-system/cairn-token-<volume>, key "token" (64 hex
// characters), label storage.cairn.dev/volume=<volume>, created by the
// manager. The agent reads it uncached and writes it to DIR/run/<volume>.token
// (file 0600, directory 0700); children get --token-file, never the token in
// argv or env, and it is never logged. The file goes when the node's last
// replica of the volume is deleted. The replicas' TCP connections (from the
// engine, from other replicas, and the agent's own for copies and backups)
// are TLS 1.3 keyed by this token (replica/wire); `cairn node --tls=false`
// (Options.PlaintextTCP) starts the children with --tls=false.
//
// Replica (cluster-scoped; spec.volumeName, spec.nodeID, spec.size,
// spec.diskPath empty or equal to the agent's DIR). The agent adds finalizer
// storage.cairn.dev/replica-data, picks a free TCP port once from --replica-ports (default
// 10000-30000, below the kernel's ephemeral range so no outgoing connection takes it; kept
// with the size the replica was created with in DIR/state/<replica>.json), holds it with a
// listener of its own whenever the replica process does not run (released just before the
// child starts), and reports status.address <address>:<port> at once, even while no process
// runs, so the manager can list it in the Engine.
// It runs
//
//	cairn replica --volume V --replica R --dir DIR/replicas/R --size N \
//	    --listen ADDR:PORT --token-file DIR/run/V.token
//
// only while an Engine object named V exists (on any node, also while it is
// being deleted, so the engine can flush): a detached volume keeps no
// processes running. status.state is Stopped (detached; Ready=True reason
// Detached), Starting, Running (the port accepts connections; Ready=True) or
// Error (exited, restarting with backoff 1s doubling to 30s, reset after a
// minute of stable running); status.pid and status.restarts describe the
// child. A replica keeps the size it was created with on the command line;
// a volume grows through its engine, which grows every member (and a
// smaller member when it opens), so a restarted replica opens at its grown
// size (Reconciling reason ResizePending while a larger spec.size waits for
// that). A running Engine whose spec.size grows is grown online
// (control.Client.Grow, then fuse.RefreshLoopCapacity on the loop device;
// Reconciling reason Growing meanwhile). Deleting the Replica
// stops the child, deletes DIR/replicas/R and its state, then removes the
// finalizer.
//
// Restore. A Replica with spec.restore {backupTargetRef, volume, backup}
// (set by the manager for a volume created fromBackup; backup is a resolved
// ID) is filled from that backup before it first runs: the agent opens the
// BackupTarget with its Secrets (read uncached, as tokens are), restores
// into DIR/replicas/.restore-R, sets the replica's generation to 2 (so an
// engine opening it beside an empty replica rebuilds the empty one) and
// renames the directory to DIR/replicas/R; that directory's existence
// records that the restore is complete, and a crash meanwhile leaves only
// the scratch directory, removed at the next start. Meanwhile status.state
// is Restoring with restoreProgress (percent); then status.restoredBackup
// names the backup. A backup that is gone, corrupt or larger than expected
// stalls the Replica (reason RestoreFailed); a target that cannot be
// opened is retried (reason WaitingForBackupTarget).
//
// Engine (cluster-scoped, named after the volume; spec.volumeName,
// spec.nodeID, spec.size, spec.replicas as replica addresses, spec.frontend
// "" = nbd where the nbd module and nbd-client exist, else fuse). The agent
// adds finalizer storage.cairn.dev/engine, waits up to 30s for every replica
// address to listen, then runs
//
//	cairn engine --volume V --size N --token-file DIR/run/V.token \
//	    --frontend fuse --control unix:DIR/run/V.ctl --replica A --replica B \
//	    --mountpoint DIR/mnt/V            (nbd: --listen unix:DIR/run/V.nbd)
//
// puts the FUSE file DIR/mnt/V/V on a loop device (nbd: nbd-client connects a
// /dev/nbdN) and reports status.endpoint, state Running, Ready. It polls the
// control endpoint every few seconds for status.replicaModes
// {address: healthy|rebuilding|resyncing|stale|failed}, robustness and
// rebuildProgress. When spec.replicas changes it adds new addresses
// (AddReplica, no wait; the engine rebuilds them) and removes dropped ones;
// the engine itself rebuilds members that come back. A crashed engine is
// restarted like a replica and gets a fresh loop device (the old one lost its
// FUSE file). Deleting the Engine detaches the device, stops the engine
// (SIGTERM: it flushes and unmounts), removes any mount left, then the
// finalizer. An Engine whose nodeID moves away is torn down locally.
//
// Engine without a frontend. spec.frontend "none" (set by the manager while
// a detached volume has snapshots or backups to run) starts the engine with
// only its control endpoint: no device, status.endpoint empty, Running once
// the volume is open. The replicas run while it exists, like any engine's.
//
// Replica with spec.copyFrom (a volume created fromSnapshot or
// fromVolume): before it first runs, the agent copies the snapshot's view
// (the extents its layer chain holds, Diff from nothing) from a healthy
// replica of the source volume's running engine through that replica's
// process (replica.Remote), into DIR/replicas/.restore-<replica>, marks it
// with the restored generation and renames it into place; status state
// Restoring with restoreProgress meanwhile, copiedSnapshot VOLUME/SNAPSHOT
// once done. A crash mid-copy leaves only the scratch directory, which the
// next attempt removes before copying again.
//
// Snapshot (cluster-scoped; spec.volumeName). The agent of the node whose
// Engine for the volume is Running takes it through the engine's control
// endpoint (POST /v1/snapshots, under the engine's I/O barrier, on every
// replica, named after the object), adds finalizer
// storage.cairn.dev/snapshot and sets status.readyToUse, creationTime and
// restoreSize; deleting the object removes the snapshot from the replicas
// (through the engine again), then the finalizer.
//
// Backup (cluster-scoped; spec.volumeName, spec.backupTargetRef, optional
// spec.snapshotName; objects with spec.backupID are imported descriptions
// and never run). The same agent takes a snapshot "backup-<name>" labelled
// storage.cairn.dev/backup (unless spec.snapshotName names a ready
// Snapshot), then streams it from a healthy replica through that replica's
// running process (replica.Remote: the protocol's Diff, LayerExtents and
// ReadLayer) to the target, incrementally against the volume's newest
// backup, under the volume's name and with label storage.cairn.dev/backup
// naming the object. Status: state InProgress with progress and
// uploadedBytes while it runs; Completed with backupID, size and
// completionTime once the backup is complete in the target; a failure is
// retried with backoff (Reconciling, the reason in its message); a missing
// Snapshot fails it (state Failed, Stalled). After a backup completes, the
// older "backup-" snapshots are removed: the newest is the base of the next.
//
// CairnNode (named --name). Created by the agent if missing; its spec belongs
// to users and is never written. Every 5s the agent renews Lease
// cairn-system/cairn-node-<name> (leaseDurationSeconds 20: the manager treats
// the node as lost when it expires); it patches status (disks: the data
// directory's filesystem capacity/available and replicaCount; zone;
// lastHeartbeatTime; Ready) when something other than free space changed,
// and at least every 30s.
//
// # Processes
//
// Children run in their own process groups with output in DIR/log/<key>.log
// and pids in DIR/run/<key>.pid. SIGTERM of the agent detaches its loop
// devices and stops engines, then replicas. An agent that was killed or
// crashed leaves them running: a starting agent adopts every process named
// in a pid file whose /proc/PID/cmdline still names DIR and the instance
// (watched through a pidfd; restarted as usual once it exits, stopped when
// its object is gone) and keeps the FUSE mount and loop device of each
// adopted engine, so filesystems mounted on them stay usable; it detaches
// the other loop devices backed by files under DIR/mnt, stops leftovers it
// could not adopt and unmounts what else is left under DIR/mnt.
//
// Layout of DIR:
//
//	replicas/<replica>/   replica data (deleted with the Replica object)
//	replicas/.restore-<replica>/  a restore or copy in progress
//	state/<replica>.json  the replica's port and creation size
//	run/                  <volume>.token, <volume>.ctl, <volume>.nbd, <key>.pid
//	mnt/<volume>/<volume> the FUSE volume file behind the loop device
//	log/<key>.log         children's output
package node
