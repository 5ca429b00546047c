package rawsys

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// iovBytes returns the bytes the iovecs point at, in order.
func iovBytes(iov []unix.Iovec) []byte {
	var out []byte
	for _, v := range iov {
		out = append(out, unsafe.Slice(v.Base, v.Len)...)
	}
	return out
}

func TestIovecs(t *testing.T) {
	bufs := [][]byte{[]byte("abc"), nil, []byte("defg"), {}, []byte("h")}
	all := []byte("abcdefgh")
	for skip := 0; skip <= len(all); skip++ {
		iov := Iovecs(nil, bufs, skip)
		require.Equal(t, string(all[skip:]), string(iovBytes(iov)), "skip %d", skip)
		for _, v := range iov {
			require.NotZero(t, v.Len, "no empty iovec (skip %d)", skip)
		}
	}

	// At most MaxIov iovecs; the rest is for the next call.
	many := make([][]byte, MaxIov+10)
	for i := range many {
		many[i] = []byte{byte(i)}
	}
	iov := Iovecs(nil, many, 0)
	require.Len(t, iov, MaxIov)
	require.Len(t, Iovecs(nil, many, MaxIov), 10)
}

func TestFileCalls(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	require.NoError(t, err)
	defer f.Close()
	fd := f.Fd()
	data := bytes.Repeat([]byte("cairn"), 1000)

	n, e := Pwrite(fd, data, 4096)
	require.Zero(t, e)
	require.Equal(t, len(data), n)

	// Just written, so cached: RWF_NOWAIT reads it.
	got := make([]byte, len(data))
	n, e = Preadv2(fd, got, 4096, unix.RWF_NOWAIT)
	require.Zero(t, e)
	require.Equal(t, len(data), n)
	require.Equal(t, data, got)

	// A bad descriptor is an errno, not a panic or a Go error.
	_, e = Pwrite(^uintptr(0), data, 0)
	require.Equal(t, unix.EBADF, e)
}

func TestPipeCalls(t *testing.T) {
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	r, w := uintptr(p[0]), uintptr(p[1])

	buf := make([]byte, 16)
	_, e := Read(r, buf)
	require.Equal(t, unix.EAGAIN, e, "an empty non-blocking pipe says EAGAIN")

	n, e := Write(w, []byte("one"))
	require.Zero(t, e)
	require.Equal(t, 3, n)
	n, e = Writev(w, Iovecs(nil, [][]byte{[]byte("two"), []byte("three")}, 0))
	require.Zero(t, e)
	require.Equal(t, 8, n)

	n, e = Read(r, buf)
	require.Zero(t, e)
	require.Equal(t, "onetwothree", string(buf[:n]))
}

// A Reader waits in the poller for data, returns 0 at end of file, and
// ends with the poller's error when the descriptor is closed.
func TestReader(t *testing.T) {
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
	rf, wf := os.NewFile(uintptr(p[0]), "r"), os.NewFile(uintptr(p[1]), "w")
	defer rf.Close()
	rc, err := rf.SyscallConn()
	require.NoError(t, err)
	r := NewReader(rc, 0)

	go func() { _, _ = wf.Write([]byte("later")) }()
	buf := make([]byte, 16)
	n, errno, err := r.Read(buf)
	require.NoError(t, err)
	require.Zero(t, errno)
	require.Equal(t, "later", string(buf[:n]), "Read waited for the write")

	require.NoError(t, wf.Close())
	n, errno, err = r.Read(buf)
	require.NoError(t, err)
	require.Zero(t, errno)
	require.Zero(t, n, "end of file")

	require.NoError(t, rf.Close())
	_, _, err = r.Read(buf)
	require.ErrorContains(t, err, "closed file")
}
