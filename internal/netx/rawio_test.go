package netx

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rawPair returns a RawIO connection dialed to addr and the accepted end
// (plain).
func rawPair(t *testing.T, addr string) (raw, peer net.Conn) {
	t.Helper()
	ln, err := Listen(addr)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	dial := addr
	if !IsUnix(addr) {
		dial = ln.Addr().String()
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	raw, err = Dial(context.Background(), dial)
	require.NoError(t, err)
	_, isRaw := raw.(*rawConn)
	require.True(t, isRaw, "Dial returns a RawIO connection")
	peer = <-accepted
	require.NotNil(t, peer)
	t.Cleanup(func() { raw.Close(); peer.Close() })
	return raw, peer
}

func TestRawIO(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "unix:" + filepath.Join(t.TempDir(), "s")} {
		t.Run(addr[:4], func(t *testing.T) {
			raw, peer := rawPair(t, addr)
			// 16 MiB each way: far more than the socket buffers, so both
			// directions wait in the poller (EAGAIN) and resume.
			data := make([]byte, 16<<20)
			_, _ = rand.Read(data)
			got := make(chan []byte, 1)
			go func() { b, _ := io.ReadAll(io.LimitReader(peer, int64(len(data)))); got <- b }()
			n, err := raw.Write(data)
			require.NoError(t, err)
			require.Equal(t, len(data), n)
			require.True(t, bytes.Equal(data, <-got), "Write delivers every byte in order")

			go func() { _, _ = peer.Write(data) }()
			back := make([]byte, len(data))
			_, err = io.ReadFull(raw, back)
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, back), "Read returns every byte in order")

			// WriteBuffers: more buffers than one writev takes, of odd
			// sizes, some empty.
			var bufs [][]byte
			var want []byte
			for i := 0; i < 3000; i++ {
				b := data[i*997 : i*997+i%13*311]
				bufs = append(bufs, b)
				want = append(want, b...)
			}
			go func() { b, _ := io.ReadAll(io.LimitReader(peer, int64(len(want)))); got <- b }()
			wn, err := WriteBuffers(raw, bufs)
			require.NoError(t, err)
			require.Equal(t, int64(len(want)), wn)
			require.True(t, bytes.Equal(want, <-got), "WriteBuffers delivers every buffer in order")

			// A read deadline ends a read that has nothing to read.
			require.NoError(t, raw.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
			_, err = raw.Read(back[:1])
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			require.NoError(t, raw.SetReadDeadline(time.Time{}))

			// The peer closing is EOF; writing to it then fails.
			require.NoError(t, peer.Close())
			_, err = raw.Read(back[:1])
			require.ErrorIs(t, err, io.EOF)
			var werr error
			for i := 0; i < 100 && werr == nil; i++ {
				_, werr = raw.Write(data[:64<<10])
			}
			var op *net.OpError
			require.True(t, errors.As(werr, &op), "write to a closed peer: %v", werr)

			// Close ends a read in progress.
			addr2 := addr
			if IsUnix(addr) {
				addr2 += "2"
			}
			raw2, _ := rawPair(t, addr2)
			done := make(chan error, 1)
			go func() { _, err := raw2.Read(back[:1]); done <- err }()
			time.Sleep(10 * time.Millisecond)
			require.NoError(t, raw2.Close())
			require.ErrorIs(t, <-done, net.ErrClosed)
		})
	}
}

// A connection without a descriptor is returned as it is.
func TestRawIOPipe(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	require.Equal(t, a, RawIO(a))
}
