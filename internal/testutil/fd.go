package testutil

import (
	"errors"
	"os"
	"syscall"
	"testing"
)

// FDHog holds every free file descriptor of the test process so that the
// next accept or open fails with EMFILE.
type FDHog struct {
	t     testing.TB
	old   syscall.Rlimit
	files []*os.File
}

// ExhaustFDs lowers the soft RLIMIT_NOFILE to the number of open
// descriptors plus a little and opens /dev/null until that fails with
// EMFILE. Restore (also run at cleanup) undoes both. Tests using it must
// not run in parallel with others.
func ExhaustFDs(t testing.TB) *FDHog {
	t.Helper()
	h := &FDHog{t: t}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &h.old); err != nil {
		t.Fatal(err)
	}
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	lim := h.old
	lim.Cur = uint64(len(open) + 64)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Restore)
	for {
		f, err := os.Open(os.DevNull)
		if errors.Is(err, syscall.EMFILE) {
			return h
		}
		if err != nil {
			h.Restore()
			t.Fatal(err)
		}
		h.files = append(h.files, f)
	}
}

// Free closes n of the held descriptors.
func (h *FDHog) Free(n int) {
	for ; n > 0 && len(h.files) > 0; n-- {
		h.files[len(h.files)-1].Close()
		h.files = h.files[:len(h.files)-1]
	}
}

// Restore closes the held descriptors and restores the limit.
func (h *FDHog) Restore() {
	h.Free(len(h.files))
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &h.old); err != nil {
		h.t.Error(err)
	}
}
