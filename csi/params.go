package csi

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// StorageClass and VolumeSnapshotClass parameters.
const (
	ParamPolicy       = "policy"
	ParamReplicas     = "replicas"
	ParamType         = "type"
	ParamBackupTarget = "backupTarget"
	// Parameters with this prefix are the sidecars' (fstype, PVC name...)
	// and are ignored.
	sidecarPrefix = "csi.storage.k8s.io/"
)

// Volume size bounds (the Volume CRD's).
const (
	sizeUnit    = 4096
	maxSize     = 64 << 40
	defaultSize = 1 << 30
)

// volumeParams are the StorageClass parameters of CreateVolume.
type volumeParams struct {
	policy   string
	replicas *int32
}

// parseVolumeParams reads policy and replicas and rejects any other
// parameter (InvalidArgument).
func parseVolumeParams(p map[string]string) (volumeParams, error) {
	var out volumeParams
	for k, v := range p {
		switch {
		case strings.HasPrefix(k, sidecarPrefix):
		case k == ParamPolicy:
			if !isObjectName(v) {
				return out, status.Errorf(codes.InvalidArgument, "parameter policy %q is not a VolumePolicy name", v)
			}
			out.policy = v
		case k == ParamReplicas:
			n, err := strconv.ParseInt(v, 10, 32)
			if err != nil || n < 1 || n > 7 {
				return out, status.Errorf(codes.InvalidArgument, "parameter replicas %q must be a whole number from 1 to 7", v)
			}
			r := int32(n)
			out.replicas = &r
		default:
			return out, status.Errorf(codes.InvalidArgument, "unknown parameter %q (supported: policy, replicas)", k)
		}
	}
	return out, nil
}

// snapshotParams are the VolumeSnapshotClass parameters of CreateSnapshot.
type snapshotParams struct {
	kind   string // kindSnapshot or kindBackup
	target string // backupTarget, for backups
}

func parseSnapshotParams(p map[string]string) (snapshotParams, error) {
	out := snapshotParams{kind: kindSnapshot}
	for k, v := range p {
		switch {
		case strings.HasPrefix(k, sidecarPrefix):
		case k == ParamType:
			if v != kindSnapshot && v != kindBackup {
				return out, status.Errorf(codes.InvalidArgument, "parameter type %q must be snapshot or backup", v)
			}
			out.kind = v
		case k == ParamBackupTarget:
			if !isObjectName(v) {
				return out, status.Errorf(codes.InvalidArgument, "parameter backupTarget %q is not a BackupTarget name", v)
			}
			out.target = v
		default:
			return out, status.Errorf(codes.InvalidArgument, "unknown parameter %q (supported: type, backupTarget)", k)
		}
	}
	if out.target != "" && out.kind != kindBackup {
		return out, status.Error(codes.InvalidArgument, "parameter backupTarget applies only to type backup")
	}
	return out, nil
}

// volumeSize turns a capacity range into a size: required bytes rounded up
// to 4096 (1 GiB when nothing is required, capped by the limit) and no
// less than least (a restore's source size). OutOfRange when no size fits.
func volumeSize(r *csi.CapacityRange, least int64) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity range bytes must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "required bytes %d exceed limit bytes %d", req, lim)
	}
	size := roundUp(max(req, least))
	if size == 0 {
		size = defaultSize
		if lim > 0 {
			size = min(size, lim/sizeUnit*sizeUnit)
		}
	}
	if size == 0 || size > maxSize || (lim > 0 && size > lim) {
		return 0, status.Errorf(codes.OutOfRange, "no size in multiples of 4096 between %d and %d bytes fits (at least %d, at most 64Ti)", req, lim, least)
	}
	return size, nil
}

func roundUp(n int64) int64 { return (n + sizeUnit - 1) / sizeUnit * sizeUnit }

// fits reports whether an existing size satisfies a capacity range.
func fits(size int64, r *csi.CapacityRange) bool {
	return size >= r.GetRequiredBytes() && (r.GetLimitBytes() == 0 || size <= r.GetLimitBytes())
}

func describeRange(r *csi.CapacityRange) string {
	return fmt.Sprintf("required %d, limit %d", r.GetRequiredBytes(), r.GetLimitBytes())
}
