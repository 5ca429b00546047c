package csi

import (
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Filesystems NodeStage creates and mounts.
var supportedFS = map[string]bool{"": true, "ext4": true, "xfs": true}

// Access modes a Cairn volume supports: one node at a time (the engine
// runs on the node it is attached to), reading and writing or read-only.
var supportedModes = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:      true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY: true,
}

// checkCapabilities returns InvalidArgument for a missing list or any
// capability the driver cannot honour.
func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	for _, c := range caps {
		if err := checkCapability(c); err != nil {
			return err
		}
	}
	return nil
}

// checkCapability validates one capability: block or mount (ext4, xfs),
// single-node access.
func checkCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return status.Error(codes.InvalidArgument, "volume capability is required")
	}
	if err := capabilityProblem(c); err != "" {
		return status.Error(codes.InvalidArgument, err)
	}
	return nil
}

// capabilityProblem describes why c is unsupported, or "".
func capabilityProblem(c *csi.VolumeCapability) string {
	switch {
	case c.GetAccessMode() == nil:
		return "volume capability has no access mode"
	case !supportedModes[c.GetAccessMode().GetMode()]:
		return fmt.Sprintf("access mode %s is not supported: a Cairn volume is attached to one node at a time", c.GetAccessMode().GetMode())
	case c.GetBlock() == nil && c.GetMount() == nil:
		return "volume capability has neither block nor mount access type"
	case c.GetMount() != nil && !supportedFS[c.GetMount().GetFsType()]:
		return fmt.Sprintf("filesystem %q is not supported (ext4 or xfs)", c.GetMount().GetFsType())
	}
	return ""
}

// readOnlyMode reports whether the capability asks for read-only access.
func readOnlyMode(c *csi.VolumeCapability) bool {
	return c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}
