// Package kubeletstub stands in for the kubelet on the simulated nodes of
// `cairn dev`, which runs no kubelet, so that PVCs reach a directory through
// the same CSI calls and API objects as in a real cluster. Pods are never
// run; only their volumes are handled:
//
//	Register   NodeGetInfo on the node's CSI socket → Node (if missing, with the
//	           driver's topology labels) and CSINode (driver nodeID, topology keys)
//	Pod with spec.nodeName = a simulated node, using PVCs:
//	  VolumeAttachment (what the attach-detach controller creates) → csi-attacher
//	  marks it attached → NodeStage + NodePublish through the node's CSI socket
//	  (publish_context from the VolumeAttachment) → Pod condition
//	  cairn.dev/VolumesPublished with "VOLUME=PATH" pairs, and an event
//	Pod deleted (deletionTimestamp): NodeUnpublish, NodeUnstage when no other pod
//	  on the node uses the volume, delete the VolumeAttachment, then delete the
//	  Pod with grace period 0 as the kubelet does
//	PVC with condition FileSystemResizePending and published on a node:
//	  NodeExpandVolume, then status.capacity as the kubelet sets it
//
// Paths follow the kubelet's layout under the node's data directory:
//
//	DIR/plugins/kubernetes.io/csi/csi.cairn.dev/SHA256(handle)/globalmount   staging
//	DIR/pods/UID/volumes/kubernetes.io~csi/PV/mount                          filesystem
//	DIR/pods/UID/volumeDevices/kubernetes.io~csi/PV                          raw block (device file)
//
// What a pod's volumes are published at is kept in memory: a pod deleted
// with grace period 0 while the stand-in runs is cleaned up, one deleted
// while it does not run leaves its mounts (the kubelet would find them on
// disk). Stopping the stand-in unpublishes and unstages everything and
// deletes the VolumeAttachments, as a node going down loses its mounts;
// the next start attaches and publishes the pods' volumes afresh.
//
// Expansion: the claim's NodeExpandVolume runs where it is published, so a
// filesystem grows online (ext4 needs CAP_SYS_RESOURCE for that, xfs
// CAP_SYS_ADMIN).
package kubeletstub
