package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// installHints says how to get each external tool the tests use.
var installHints = map[string]string{
	"fio":                     "apt-get install -y fio (or run hack/install-deps.sh)",
	"qemu-img":                "apt-get install -y qemu-utils (or run hack/install-deps.sh)",
	"qemu-io":                 "apt-get install -y qemu-utils (or run hack/install-deps.sh)",
	"qemu-nbd":                "apt-get install -y qemu-utils (or run hack/install-deps.sh)",
	"nbdkit":                  "apt-get install -y nbdkit (or run hack/install-deps.sh)",
	"nbdinfo":                 "apt-get install -y libnbd-bin (or run hack/install-deps.sh)",
	"nbdcopy":                 "apt-get install -y libnbd-bin (or run hack/install-deps.sh)",
	"aws":                     "apt-get install -y awscli (or run hack/install-deps.sh)",
	"restic":                  "apt-get install -y restic (or run hack/install-deps.sh)",
	"mkfs.ext4":               "apt-get install -y e2fsprogs (or run hack/install-deps.sh)",
	"losetup":                 "apt-get install -y mount (or run hack/install-deps.sh)",
	"mount":                   "apt-get install -y mount",
	"blkid":                   "apt-get install -y util-linux",
	"nsenter":                 "apt-get install -y util-linux",
	"ip":                      "apt-get install -y iproute2",
	"iptables":                "apt-get install -y iptables (or run hack/install-deps.sh)",
	"mkfs.xfs":                "apt-get install -y xfsprogs (or run hack/install-deps.sh)",
	"xfs_growfs":              "apt-get install -y xfsprogs (or run hack/install-deps.sh)",
	"resize2fs":               "apt-get install -y e2fsprogs (or run hack/install-deps.sh)",
	"versitygw":               "make tools (builds bin/versitygw)",
	"etcd":                    "make tools (builds bin/etcd)",
	"kube-apiserver":          "make tools (builds bin/kube-apiserver)",
	"kube-controller-manager": "make tools (builds bin/kube-controller-manager)",
	"csi-provisioner":         "make tools (builds bin/csi-provisioner)",
	"csi-attacher":            "make tools (builds bin/csi-attacher)",
	"csi-snapshotter":         "make tools (builds bin/csi-snapshotter)",
	"snapshot-controller":     "make tools (builds bin/snapshot-controller)",
	"csi-resizer":             "make tools (builds bin/csi-resizer)",
	"chromium":                "apt-get install -y chromium (or run hack/install-deps.sh)",
}

// RepoRoot returns the repository root (the directory holding go.mod).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// BinDir returns the repository's bin/ directory, where `make tools` builds.
func BinDir() string { return filepath.Join(RepoRoot(), "bin") }

// OnCI reports whether the tests run on CI, where a missing tool is a
// failure rather than a skip.
func OnCI() bool { return os.Getenv("CI") == "true" }

// RequireTool returns the path of an external tool, looking in bin/ first and
// then in PATH. A missing tool fails the test on CI and skips it elsewhere,
// both with the install hint.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	if p := filepath.Join(BinDir(), name); isExecutable(p) {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	hint := installHint(name)
	if OnCI() {
		t.Fatalf("required tool %q not found: %s", name, hint)
	}
	t.Skipf("required tool %q not found: %s", name, hint)
	return ""
}

// RequireRoot fails on CI and skips elsewhere when the test needs root
// (loop devices, mount, FUSE).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if OnCI() {
		t.Fatal("this test needs root (loop devices, mount, FUSE)")
	}
	t.Skip("this test needs root (loop devices, mount, FUSE)")
}

// installHint says how to get an external tool.
func installHint(name string) string {
	if hint := installHints[name]; hint != "" {
		return hint
	}
	return "install " + name
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}
