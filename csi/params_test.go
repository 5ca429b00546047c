package csi

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestVolumeSize(t *testing.T) {
	cases := []struct {
		name      string
		req, lim  int64
		min, want int64
		code      codes.Code
	}{
		{name: "default", want: 1 << 30},
		{name: "rounded up", req: 1, want: 4096},
		{name: "exact", req: 8192, want: 8192},
		{name: "default capped by limit", lim: 1 << 20, want: 1 << 20},
		{name: "limit rounded down", lim: 5000, want: 4096},
		{name: "restore size", req: 4096, min: 1 << 20, want: 1 << 20},
		{name: "no multiple of 4096 fits", req: 4097, lim: 5000, code: codes.OutOfRange},
		{name: "limit below 4096", lim: 100, code: codes.OutOfRange},
		{name: "restore larger than limit", lim: 1 << 20, min: 2 << 20, code: codes.OutOfRange},
		{name: "too large", req: maxSize + 1, code: codes.OutOfRange},
		{name: "required above limit", req: 10, lim: 5, code: codes.InvalidArgument},
		{name: "negative", req: -1, code: codes.InvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := volumeSize(&csi.CapacityRange{RequiredBytes: c.req, LimitBytes: c.lim}, c.min)
			require.Equal(t, c.code, status.Code(err), "%v", err)
			assert.Equal(t, c.want, got)
		})
	}
}

func TestObjectName(t *testing.T) {
	assert.Equal(t, "pvc-0b8d3c4e-8d35-4f0e-9a1c-2f7f6b1d2e3a", objectName("pvc-0b8d3c4e-8d35-4f0e-9a1c-2f7f6b1d2e3a"))
	long := objectName("Sanity-Volume-ABC")
	assert.Regexp(t, `^csi-[0-9a-f]{24}$`, long)
	assert.Equal(t, long, objectName("Sanity-Volume-ABC"), "deterministic")
	assert.NotEqual(t, long, objectName("sanity-volume-abc"))
	assert.Regexp(t, `^csi-[0-9a-f]{24}$`, objectName(string(make([]byte, 41))))
}

func TestSnapshotID(t *testing.T) {
	for _, id := range []string{"", "x", "snapshot/", "clone/a", "backup/UPPER", "snapshot/a/b"} {
		_, _, ok := parseSnapshotID(id)
		assert.False(t, ok, id)
	}
	kind, name, ok := parseSnapshotID(snapshotID(kindBackup, "b-1"))
	require.True(t, ok)
	assert.Equal(t, []string{kindBackup, "b-1"}, []string{kind, name})
}

func TestParams(t *testing.T) {
	bad := []map[string]string{
		{"replicas": "0"}, {"replicas": "8"}, {"replicas": "two"}, {"policy": "Not_A_Name"}, {"fsType": "ext4"},
	}
	for _, p := range bad {
		_, err := parseVolumeParams(p)
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", p)
	}
	p, err := parseVolumeParams(map[string]string{"policy": "gold", "replicas": "2", "csi.storage.k8s.io/fstype": "xfs"})
	require.NoError(t, err)
	assert.Equal(t, "gold", p.policy)
	assert.Equal(t, int32(2), *p.replicas)

	for _, s := range []map[string]string{{"type": "clone"}, {"backupTarget": "t"}, {"type": "backup", "backupTarget": "T!"}, {"x": "y"}} {
		_, err := parseSnapshotParams(s)
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", s)
	}
	sp, err := parseSnapshotParams(map[string]string{"type": "backup", "backupTarget": "primary"})
	require.NoError(t, err)
	assert.Equal(t, snapshotParams{kind: kindBackup, target: "primary"}, sp)
}

func TestPage(t *testing.T) {
	ids := []string{"a", "b", "c", "d"}
	got, next, err := page(ids, "", 3)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b", "c"}, got)
	got, next, err = page(ids, next, 3)
	require.NoError(t, err)
	assert.Equal(t, []string{"d"}, got)
	assert.Empty(t, next)
	// The next entry was deleted between pages: the token still works.
	got, _, err = page([]string{"a", "b", "d"}, tokenPrefix+"c", 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"d"}, got)
	_, _, err = page(ids, "invalid-token", 0)
	assert.Equal(t, codes.Aborted, status.Code(err))
	_, _, err = page(ids, "", -1)
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
}

func TestCapabilities(t *testing.T) {
	mode := func(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability_AccessMode {
		return &csi.VolumeCapability_AccessMode{Mode: m}
	}
	mount := &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}
	block := &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	good := []*csi.VolumeCapability{
		{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), AccessType: mount},
		{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY), AccessType: block},
		{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "xfs"}}},
	}
	require.NoError(t, checkCapabilities(good))
	bad := []*csi.VolumeCapability{
		nil,
		{AccessType: mount},
		{AccessMode: mode(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), AccessType: mount},
		{AccessMode: mode(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY), AccessType: block},
		{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
		{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "btrfs"}}},
	}
	for i, c := range bad {
		assert.Equal(t, codes.InvalidArgument, status.Code(checkCapability(c)), "case %d", i)
	}
	assert.Equal(t, codes.InvalidArgument, status.Code(checkCapabilities(nil)))
}

func TestParseMountinfo(t *testing.T) {
	m, ok := parseMountinfo(`36 35 98:0 / /mnt/with\040space rw,noatime master:1 - ext4 /dev/loop3 rw,errors=continue`)
	require.True(t, ok)
	assert.Equal(t, mountEntry{point: "/mnt/with space", fsType: "ext4", source: "/dev/loop3"}, m)
	_, ok = parseMountinfo("garbage")
	assert.False(t, ok)
}
