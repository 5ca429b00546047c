package replica

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cairnstore/cairn/replica/wire"
	"github.com/stretchr/testify/require"
)

const testToken = "s3cret-token"

// startServer serves r on a unix socket and returns its address.
func startServer(t testing.TB, r *Replica) string {
	t.Helper()
	addr := "unix:" + filepath.Join(t.TempDir(), "r.sock")
	ln, err := Listen(addr)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, r, testToken) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return addr
}

func dialTest(t testing.TB, addr string) *Client {
	t.Helper()
	c, err := Dial(context.Background(), addr, testToken)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestClientPipelined: many goroutines issue I/O on one connection.
func TestClientPipelined(t *testing.T) {
	const size = 16 << 20
	r := newTestReplica(t, size)
	c := dialTest(t, startServer(t, r))
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			region := int64(g) * (size / 16)
			for i := 0; i < 100; i++ {
				off := region + rng.Int64N(size/16-9000)
				p := make([]byte, 1+rng.IntN(9000))
				for k := range p {
					p[k] = byte(rng.Uint32())
				}
				if _, err := c.WriteAt(ctx, p, off); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, len(p))
				if _, err := c.ReadAt(ctx, got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(p, got) {
					t.Errorf("goroutine %d: read back mismatch at %d", g, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	require.NoError(t, c.Flush(ctx))
	require.NoError(t, c.Ping(ctx))

	// large I/O is split into frames transparently
	big := bytes.Repeat([]byte{0x5A}, 3*MaxIO+123)
	_, err := c.WriteAt(ctx, big, 100)
	require.NoError(t, err)
	got := make([]byte, len(big))
	_, err = c.ReadAt(ctx, got, 100)
	require.NoError(t, err)
	require.Equal(t, big, got)
	local := make([]byte, len(big))
	_, err = r.ReadAt(local, 100)
	require.NoError(t, err)
	require.Equal(t, big, local)
}

func TestClientControl(t *testing.T) {
	const size = 1 << 20
	r := newTestReplica(t, size)
	c := dialTest(t, startServer(t, r))
	ctx := context.Background()
	_, err := c.WriteAt(ctx, bytes.Repeat([]byte{1}, 2*BlockSize), 0)
	require.NoError(t, err)
	require.NoError(t, c.Snapshot(ctx, "a", map[string]string{"k": "v"}))
	_, err = c.WriteAt(ctx, bytes.Repeat([]byte{2}, BlockSize), 8*BlockSize)
	require.NoError(t, err)
	require.NoError(t, c.Trim(ctx, 0, BlockSize))
	require.NoError(t, c.WriteZeroes(ctx, BlockSize+10, 10))
	require.NoError(t, c.SetGeneration(ctx, 9))
	in, err := c.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, size, in.Size)
	require.EqualValues(t, 9, in.Generation)
	require.Len(t, in.Snapshots, 1)
	require.Equal(t, "v", in.Snapshots[0].Labels["k"])
	ext, err := c.Diff(ctx, "a", "", size)
	require.NoError(t, err)
	require.Equal(t, []Extent{{0, 2 * BlockSize}, {8 * BlockSize, BlockSize}}, ext)
	sum, err := c.Checksum(ctx, "a")
	require.NoError(t, err)
	require.Len(t, sum, 64)
	rep, err := c.Scrub(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"a"}, rep.Verified)
	require.NoError(t, c.Revert(ctx, "a"))
	got := make([]byte, BlockSize)
	_, err = c.ReadAt(ctx, got, 0)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{1}, BlockSize), got)
	require.NoError(t, c.RemoveSnapshot(ctx, "a"))
	_, err = c.ReadAt(ctx, got, 0)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{1}, BlockSize), got)

	// errors travel as sentinels
	err = c.RemoveSnapshot(ctx, "a")
	require.ErrorIs(t, err, ErrNotFound)
	var re *RemoteError
	require.True(t, errors.As(err, &re))
	require.ErrorIs(t, c.SetGeneration(ctx, 1), ErrStaleGeneration)
	_, err = c.ReadAt(ctx, got, size-10)
	require.ErrorIs(t, err, ErrOutOfRange)
	_, err = c.WriteAt(ctx, got, 1<<62)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.ErrorIs(t, c.Trim(ctx, 0, size+1), ErrOutOfRange)
	require.ErrorIs(t, c.Snapshot(ctx, "bad name", nil), ErrInvalid)
	// the connection is still fine after error replies
	require.NoError(t, c.Ping(ctx))
}

func TestWrongTokenRefused(t *testing.T) {
	r := newTestReplica(t, 1<<20)
	addr := startServer(t, r)
	_, err := Dial(context.Background(), addr, "wrong")
	require.ErrorIs(t, err, ErrAuth)
	_, err = Dial(context.Background(), addr, "")
	require.ErrorIs(t, err, ErrInvalid)
	// a client that skips the handshake and sends a request gets nothing
	conn, err := net.Dial("unix", addr[len("unix:"):])
	require.NoError(t, err)
	defer conn.Close()
	hdr := make([]byte, wire.ReqHeaderSize+12+wire.NonceSize+wire.MACSize)
	(&wire.ReqHeader{Op: wire.OpRead, ID: 1, Length: 4096}).Encode(hdr)
	conn.Write(hdr)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(conn)
	// preamble and nonce (48 bytes) then a refusal (33 bytes), then close; no data
	require.Equal(t, wire.PreambleSize+wire.NonceSize+1+wire.MACSize, len(b))
	require.EqualValues(t, 1, b[wire.PreambleSize+wire.NonceSize])
}

// rawConn authenticates and returns a raw connection for bad-frame tests.
func rawConn(t *testing.T, addr string) net.Conn {
	conn, err := net.Dial("unix", addr[len("unix:"):])
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	cred, err := wire.NewCredentials(testToken)
	require.NoError(t, err)
	conn, err = wire.ClientHandshake(context.Background(), conn, cred, false)
	require.NoError(t, err)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn
}

func readResp(t *testing.T, conn net.Conn) (wire.RespHeader, []byte) {
	b := make([]byte, wire.RespHeaderSize)
	_, err := io.ReadFull(conn, b)
	require.NoError(t, err)
	h, err := wire.DecodeRespHeader(b)
	require.NoError(t, err)
	p := make([]byte, h.Payload)
	_, err = io.ReadFull(conn, p)
	require.NoError(t, err)
	return h, p
}

func TestBadFrames(t *testing.T) {
	r := newTestReplica(t, 1<<20)
	addr := startServer(t, r)
	good := dialTest(t, addr)
	ctx := context.Background()

	t.Run("unknown op gets an error reply", func(t *testing.T) {
		conn := rawConn(t, addr)
		b := make([]byte, wire.ReqHeaderSize)
		(&wire.ReqHeader{Op: 99, ID: 7}).Encode(b)
		conn.Write(b)
		h, p := readResp(t, conn)
		require.EqualValues(t, 7, h.ID)
		require.Equal(t, wire.StatusOf(ErrUnknownOp), h.Status)
		require.Contains(t, string(p), "unknown operation")
		(&wire.ReqHeader{Op: wire.OpPing, ID: 8}).Encode(b)
		conn.Write(b)
		h, _ = readResp(t, conn)
		require.EqualValues(t, 0, h.Status)
	})
	t.Run("oversized read gets an error reply", func(t *testing.T) {
		conn := rawConn(t, addr)
		b := make([]byte, wire.ReqHeaderSize)
		(&wire.ReqHeader{Op: wire.OpRead, ID: 1, Length: MaxIO + 1}).Encode(b)
		conn.Write(b)
		h, _ := readResp(t, conn)
		require.Equal(t, wire.StatusOf(ErrTooLarge), h.Status)
	})
	t.Run("write length mismatch", func(t *testing.T) {
		conn := rawConn(t, addr)
		b := make([]byte, wire.ReqHeaderSize+10)
		(&wire.ReqHeader{Op: wire.OpWrite, ID: 1, Length: 20, Payload: 10}).Encode(b)
		conn.Write(b)
		h, _ := readResp(t, conn)
		require.Equal(t, wire.StatusOf(ErrInvalid), h.Status)
	})
	for name, mutate := range map[string]func([]byte){
		"oversized frame": func(b []byte) { binary.LittleEndian.PutUint32(b[4:], wire.MaxPayload+1) },
		"reserved bits":   func(b []byte) { b[2] = 1 },
		"flags":           func(b []byte) { b[1] = 0x80 },
	} {
		t.Run(name+" closes only that connection", func(t *testing.T) {
			conn := rawConn(t, addr)
			b := make([]byte, wire.ReqHeaderSize)
			(&wire.ReqHeader{Op: wire.OpPing, ID: 1}).Encode(b)
			mutate(b)
			conn.Write(b)
			n, err := conn.Read(make([]byte, 1))
			require.Zero(t, n)
			require.Error(t, err)
			require.NoError(t, good.Ping(ctx))
		})
	}
	t.Run("garbage and truncated frame", func(t *testing.T) {
		conn := rawConn(t, addr)
		conn.Write([]byte{wire.OpWrite, 0, 0, 0, 10, 0})
		conn.(*net.UnixConn).CloseWrite()
		n, _ := conn.Read(make([]byte, 1))
		require.Zero(t, n)
		require.NoError(t, good.Ping(ctx))
	})
}

func TestClientContextAndClose(t *testing.T) {
	r := newTestReplica(t, 1<<20)
	addr := startServer(t, r)
	c := dialTest(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, c.Ping(ctx), context.Canceled)
	require.NoError(t, c.Ping(context.Background()))
	c.Close()
	require.ErrorIs(t, c.Ping(context.Background()), ErrClosed)
	select {
	case <-c.Done():
	case <-time.After(time.Second):
		t.Fatal("Done not closed")
	}
}

// TestServerShutdownFailsPending: closing the server fails the client's
// calls with ErrClosed instead of hanging.
func TestServerShutdownFailsPending(t *testing.T) {
	r := newTestReplica(t, 1<<20)
	addr := "unix:" + filepath.Join(t.TempDir(), "r.sock")
	ln, err := Listen(addr)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, r, testToken) }()
	c := dialTest(t, addr)
	require.NoError(t, c.Ping(context.Background()))
	cancel()
	require.NoError(t, <-done)
	require.ErrorIs(t, c.Ping(context.Background()), ErrClosed)
}

func TestTCPListen(t *testing.T) {
	r := newTestReplica(t, 1<<20)
	ln, err := Listen("127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Serve(ctx, ln, r, testToken)
	c, err := Dial(ctx, ln.Addr().String(), testToken)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Ping(ctx))
	in, err := c.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1<<20, in.Size)
	_ = fmt.Sprint()
}

// TestClientManyInFlight: more concurrent requests than a connection
// starts with slots for all complete (the slots grow).
func TestClientManyInFlight(t *testing.T) {
	r := newTestReplica(t, 1<<20)
	c := dialTest(t, startServer(t, r))
	var wg sync.WaitGroup
	errs := make(chan error, 3000)
	for range 3000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Ping(context.Background())
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}
