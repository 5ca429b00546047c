// Package csi is Cairn's CSI driver, csi.cairn.dev (CSI spec v1.13): the
// identity and controller services run in the manager
// (`cairn manager --csi-endpoint unix:///path`), the identity and node
// services in every node agent (`cairn node --csi-endpoint unix:///path`).
// Each serves gRPC on a unix socket created with mode 0600 (internal/netx),
// where the standard sidecars (external-provisioner, -attacher,
// -snapshotter, -resizer; node-driver-registrar) connect.
//
//	CO / sidecars ──gRPC──▶ controller service (manager) ──▶ API server
//	                                                         Volume, Snapshot, Backup
//	kubelet ───────gRPC──▶ node service (node agent)  ◀── block device the agent
//	                       mkfs, mount, bind mount       exposes for spec.nodeID
//
// # Mapping
//
//	CSI                          Cairn
//	volume_id                    Volume name
//	CreateVolume name N          Volume named N when N is a DNS label of at most
//	                             40 characters (pvc-<uuid>), else "csi-" and 24 hex
//	                             digits of SHA-256(N); annotation csi.cairn.dev/name=N
//	capacity_range               spec.size: required bytes rounded up to 4096, 1 GiB
//	                             when none, at most the limit and 64Ti (OutOfRange)
//	parameter policy             spec.policyRef (the VolumePolicy must exist)
//	parameter replicas           spec.replicas (1..7)
//	parameters csi.storage.k8s.io/*   ignored (the sidecars')
//	snapshot_id backup/NAME      Backup NAME (VolumeSnapshotClass type: backup)
//	snapshot_id snapshot/NAME    Snapshot NAME (type: snapshot, the default)
//	content source backup/NAME   spec.fromBackup {target, source volume, backupID}
//	content source snapshot/NAME spec.fromSnapshot=NAME: the new replicas copy the
//	                             snapshot from a running replica of its volume
//	content source volume V      spec.fromVolume=V (CLONE_VOLUME): the volume
//	                             controller snapshots V for the clone, fills the
//	                             replicas from it and removes that snapshot
//	ControllerPublish node N     spec.nodeID=N; waits for state Attached on N and
//	                             returns publish_context devicePath=status.endpoint
//	ControllerUnpublish          clears spec.nodeID; waits until N's engine is gone
//	ControllerExpandVolume       grows spec.size (the agent grows the device online)
//	NodeGetInfo                  node_id = the agent's node name
//
// Other parameters are InvalidArgument. A Snapshot is owned by its Volume
// (it lives on the volume's replicas and goes with it); a Backup is created
// with deletePolicy Delete (DeleteSnapshot deletes it from the target) and
// outlives its volume. CreateSnapshot of type backup writes to the
// backupTarget parameter or else to the backupTargetRef of the volume's
// policy; with neither it is InvalidArgument. A backup is ready_to_use
// when Completed. A Volume restored from a backup that is not complete yet
// is Unavailable (retry). ListSnapshots lists the Snapshots and Backups the
// driver created; asked for one snapshot id it finds any (a schedule's or
// an imported backup too), so such a backup can be pre-provisioned as a
// VolumeSnapshotContent with snapshotHandle backup/NAME. DeleteSnapshot of a
// Snapshot that a volume is still being filled from is FailedPrecondition.
//
// # Topology
//
// NodeGetInfo reports segments topology.cairn.dev/node (the node name) and
// topology.cairn.dev/zone (the agent's --zone, when set); GetCapacity sums
// the free bytes of the data directories of Ready nodes matching the
// requested segments. CreateVolume reports no accessible_topology: the
// engine runs on whichever node the volume is published to and reaches the
// replicas over the network, so every volume is usable on every node.
//
// # Access modes
//
// SINGLE_NODE_WRITER and SINGLE_NODE_READER_ONLY, block or mount (ext4 or
// xfs, ext4 by default). Any other access mode or filesystem is
// InvalidArgument. Publishing a volume published to another node is
// FailedPrecondition; DeleteVolume of a published volume too.
//
// # Node service
//
// NodeStage checks the device named in publish_context devicePath (a block
// device, else FailedPrecondition), runs mkfs only when blkid finds no
// filesystem (an existing one is mounted as it is) and mounts it at the
// staging path (xfs with nouuid: a restored copy shares its source's
// UUID, possibly mounted on the same host); a staging path already mounted is left as it is (a
// repeated call, also after an agent restart). Block volumes are not
// staged. NodePublish bind-mounts the staging mount at the target
// directory, or the device node at the target file for raw block;
// read-only when asked. NodeUnpublish and NodeUnstage unmount everything
// stacked at the path and succeed when nothing is mounted. NodeExpandVolume
// waits until the device has grown to the required size, then runs
// resize2fs or xfs_growfs. NodeGetVolumeStats reports statfs bytes and
// inodes (the device size for raw block).
//
// Health: CSI v1.13 replaced the VolumeCondition of NodeGetVolumeStats
// and ListVolumes with NodeGetVolumeHealth and ControllerGetVolumeHealth
// (capability GET_VOLUME_HEALTH); both report DEGRADED when the Volume is
// degraded and INACCESSIBLE when it is faulted.
//
// # Leader election
//
// The controller service answers on every manager replica: it only reads
// and writes objects through the API server, under per-object locks and
// with idempotent creates, while the sidecars elect their own leader; gating
// it on the manager's leader would fail every call when the sidecars' leader
// runs beside a standby manager. Probe is ready once the manager's cache
// has synced (controller) or the agent's CairnNode is Ready (node).
//
// # Not supported yet
//
//	multi-node access modes            InvalidArgument
//	ControllerModifyVolume, ListVolumeHealth, PUBLISH_READONLY,
//	SINGLE_NODE_MULTI_WRITER, VOLUME_MOUNT_GROUP, group snapshots   not advertised (Unimplemented)
package csi
