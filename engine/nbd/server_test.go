package nbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/internal/testutil"
)

const testSize = 64 << 20

// startServer serves a sparse file of testSize over a unix socket and
// returns the socket path, the nbd URI and the backing file path.
func startServer(t *testing.T) (sock, uri, file string) {
	t.Helper()
	dir := t.TempDir()
	file = filepath.Join(dir, "disk.raw")
	b, err := engine.OpenFileBackend(file, testSize)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	sock = filepath.Join(dir, "nbd.sock")
	ln, err := Listen("unix:" + sock)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Export: "vol1", Backend: b}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock, "nbd+unix:///vol1?socket=" + sock, file
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	path := testutil.RequireTool(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
	return string(out)
}

func randomFile(t *testing.T, n int) (string, []byte) {
	t.Helper()
	data := make([]byte, n)
	_, _ = rand.Read(data)
	p := filepath.Join(t.TempDir(), "pattern")
	require.NoError(t, os.WriteFile(p, data, 0o600))
	return p, data
}

func TestNBDInfoReportsSize(t *testing.T) {
	_, uri, _ := startServer(t)
	out := run(t, "nbdinfo", "--size", uri)
	require.Equal(t, strconv.Itoa(testSize), strings.TrimSpace(out))
	out = run(t, "nbdinfo", uri)
	require.Contains(t, out, "can_multi_conn: true")
	require.Contains(t, out, "can_fua: true")
	require.Contains(t, out, "can_trim: true")
	require.Contains(t, out, "can_zero: true")
	// LIST shows the export by name.
	out = run(t, "nbdinfo", "--list", "nbd+unix:///?socket="+strings.TrimPrefix(uri[strings.Index(uri, "socket=")+7:], ""))
	require.Contains(t, out, "vol1")
}

func TestQemuImgAndNbdcopyRoundTrip(t *testing.T) {
	_, uri, file := startServer(t)
	src, data := randomFile(t, 8<<20)
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	got, err := os.ReadFile(file)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got[:len(data)]), "backing file differs after qemu-img convert")

	// nbdcopy out with 4 connections and back in.
	out := filepath.Join(t.TempDir(), "out.raw")
	run(t, "nbdcopy", "--connections=4", uri, out)
	got, err = os.ReadFile(out)
	require.NoError(t, err)
	require.Len(t, got, testSize)
	require.True(t, bytes.Equal(data, got[:len(data)]))
	require.True(t, bytes.Equal(make([]byte, testSize-len(data)), got[len(data):]))

	src2, data2 := randomFile(t, testSize)
	run(t, "nbdcopy", "--connections=4", "--requests=16", src2, uri)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src2, uri)
	got, err = os.ReadFile(file)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data2, got))
}

func TestQemuIOUnalignedFlushTrimZero(t *testing.T) {
	_, uri, _ := startServer(t)
	out := run(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 1000 12345",
		"-c", "write -P 0xcd -f 65536 4096", // FUA
		"-c", "flush",
		"-c", "read -P 0xab 1000 12345",
		"-c", "read -P 0xcd 65536 4096",
		"-c", "write -z 1000 4096",
		"-c", "read -P 0 1000 4096",
		"-c", "discard 65536 4096",
		"-c", "read -P 0 65536 4096",
		uri)
	require.NotContains(t, out, "Pattern verification failed")
	require.NotContains(t, out, "error")
}

func TestFioVerifyThroughNBD(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	sock, _, _ := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, fio, "--name=v", "--ioengine=nbd", "--uri=nbd+unix:///?socket="+sock,
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=16m", "--verify=crc32c",
		"--verify_fatal=1", "--do_verify=1", "--numjobs=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "err= 0")
}

// rawClient performs a fixed newstyle handshake with GO and returns the
// connection in transmission phase.
func rawClient(t *testing.T, sock string, structured bool) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var hdr [18]byte
	_, err = io.ReadFull(c, hdr[:])
	require.NoError(t, err)
	require.Equal(t, uint64(nbdMagic), binary.BigEndian.Uint64(hdr[0:]))
	_, err = c.Write(binary.BigEndian.AppendUint32(nil, cflagFixed|cflagNoZeroes))
	require.NoError(t, err)
	sendOpt := func(opt uint32, data []byte) {
		b := binary.BigEndian.AppendUint64(nil, optMagic)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		_, err := c.Write(append(b, data...))
		require.NoError(t, err)
	}
	readReply := func() (uint32, []byte) {
		var h [20]byte
		_, err := io.ReadFull(c, h[:])
		require.NoError(t, err)
		require.Equal(t, uint64(optReplyMagic), binary.BigEndian.Uint64(h[0:]))
		d := make([]byte, binary.BigEndian.Uint32(h[16:]))
		_, err = io.ReadFull(c, d)
		require.NoError(t, err)
		return binary.BigEndian.Uint32(h[12:]), d
	}
	if structured {
		sendOpt(optStructuredReply, nil)
		typ, _ := readReply()
		require.Equal(t, uint32(repAck), typ)
	}
	// An unknown option gets ERR_UNSUP and negotiation continues.
	sendOpt(99, []byte("junk"))
	typ, _ := readReply()
	require.Equal(t, uint32(repErrUnsup), typ)
	goData := binary.BigEndian.AppendUint32(nil, 0)
	goData = binary.BigEndian.AppendUint16(goData, 0)
	sendOpt(optGo, goData)
	for {
		typ, d := readReply()
		if typ == repAck {
			break
		}
		require.Equal(t, uint32(repInfo), typ)
		if binary.BigEndian.Uint16(d) == infoExport {
			require.Equal(t, uint64(testSize), binary.BigEndian.Uint64(d[2:]))
		}
	}
	_ = c.SetDeadline(time.Time{})
	return c
}

func sendReq(t *testing.T, c net.Conn, typ uint16, handle, off uint64, length uint32, payload []byte) {
	t.Helper()
	b := binary.BigEndian.AppendUint32(nil, requestMagic)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	_, err := c.Write(append(b, payload...))
	require.NoError(t, err)
}

// readSimple reads a reply without payload: a simple reply or a structured
// NONE or ERROR chunk.
func readSimple(t *testing.T, c net.Conn) (handle uint64, errno uint32) {
	t.Helper()
	var h [16]byte
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadFull(c, h[:4])
	require.NoError(t, err)
	if binary.BigEndian.Uint32(h[0:]) == structuredMagc {
		var s [16]byte
		_, err := io.ReadFull(c, s[:])
		require.NoError(t, err)
		handle = binary.BigEndian.Uint64(s[4:])
		payload := make([]byte, binary.BigEndian.Uint32(s[12:]))
		_, err = io.ReadFull(c, payload)
		require.NoError(t, err)
		if binary.BigEndian.Uint16(s[2:]) == replyTypeError {
			errno = binary.BigEndian.Uint32(payload)
		}
		return handle, errno
	}
	require.Equal(t, uint32(simpleMagic), binary.BigEndian.Uint32(h[0:]))
	_, err = io.ReadFull(c, h[4:])
	require.NoError(t, err)
	return binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint32(h[4:])
}

func TestOutOfRangeRequestsKeepConnection(t *testing.T) {
	sock, _, _ := startServer(t)
	for _, structured := range []bool{false, true} {
		c := rawClient(t, sock, structured)
		// Write past the end: ENOSPC, payload consumed.
		sendReq(t, c, cmdWrite, 1, testSize-512, 4096, make([]byte, 4096))
		h, e := readSimple(t, c)
		require.Equal(t, uint64(1), h)
		require.Equal(t, uint32(errNoSpc), e)
		// Trim past the end: EINVAL.
		sendReq(t, c, cmdTrim, 2, testSize, 1, nil)
		h, e = readSimple(t, c)
		require.Equal(t, uint64(2), h)
		require.Equal(t, uint32(errInval), e)
		// Read past the end.
		sendReq(t, c, cmdRead, 3, testSize+4096, 4096, nil)
		if structured {
			var h [26]byte
			_, err := io.ReadFull(c, h[:])
			require.NoError(t, err)
			require.Equal(t, uint32(structuredMagc), binary.BigEndian.Uint32(h[0:]))
			require.Equal(t, uint16(replyTypeError), binary.BigEndian.Uint16(h[6:]))
			require.Equal(t, uint32(errInval), binary.BigEndian.Uint32(h[20:]))
			_, err = io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint16(h[24:])))
			require.NoError(t, err)
		} else {
			h, e = readSimple(t, c)
			require.Equal(t, uint64(3), h)
			require.Equal(t, uint32(errInval), e)
			_, err := io.CopyN(io.Discard, c, 4096)
			require.NoError(t, err)
		}
		// Unknown command.
		sendReq(t, c, 42, 4, 0, 0, nil)
		h, e = readSimple(t, c)
		require.Equal(t, uint64(4), h)
		require.Equal(t, uint32(errInval), e)
		// The connection still works: write, flush, read back.
		sendReq(t, c, cmdWrite, 5, 4096, 5, []byte("hello"))
		h, e = readSimple(t, c)
		require.Equal(t, uint64(5), h)
		require.Zero(t, e)
		sendReq(t, c, cmdFlush, 6, 0, 0, nil)
		_, e = readSimple(t, c)
		require.Zero(t, e)
		sendReq(t, c, cmdDisc, 7, 0, 0, nil)
	}
}

func TestMalformedHandshakeClosesOnlyThatClient(t *testing.T) {
	sock, uri, _ := startServer(t)
	good := rawClient(t, sock, false)

	// A client that sends garbage instead of its flags and options.
	bad, err := net.Dial("unix", sock)
	require.NoError(t, err)
	defer bad.Close()
	_ = bad.SetDeadline(time.Now().Add(10 * time.Second))
	var hdr [18]byte
	_, err = io.ReadFull(bad, hdr[:])
	require.NoError(t, err)
	_, _ = bad.Write([]byte{0, 0, 0, 1})
	_, _ = bad.Write([]byte("this is not an NBD option header"))
	_, err = io.ReadAll(bad)
	require.NoError(t, err) // server closed it: EOF

	// A client without fixed newstyle is refused.
	old, err := net.Dial("unix", sock)
	require.NoError(t, err)
	defer old.Close()
	_ = old.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadFull(old, hdr[:])
	require.NoError(t, err)
	_, _ = old.Write([]byte{0, 0, 0, 0})
	_, err = io.ReadAll(old)
	require.NoError(t, err)

	// The established client keeps working, and new clients connect.
	sendReq(t, good, cmdWrite, 9, 0, 3, []byte("abc"))
	h, e := readSimple(t, good)
	require.Equal(t, uint64(9), h)
	require.Zero(t, e)
	run(t, "nbdinfo", "--size", uri)
}
