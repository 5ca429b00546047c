package replica

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"time"

	"github.com/cairnstore/cairn/internal/netx"
)

// handshakeTimeout bounds the authentication exchange.
const handshakeTimeout = 10 * time.Second

// In-flight byte budgets: a connection stops reading requests while the
// requests and replies it holds exceed maxConnBytes, and all connections
// together hold at most maxServerBytes.
const (
	maxConnBytes   = 64 << 20
	maxServerBytes = 512 << 20
)

// Listen opens a listener for addr: "unix:/path" for a unix socket (mode
// 0600; a stale socket file is replaced), anything else is a TCP
// host:port.
func Listen(addr string) (net.Listener, error) { return netx.Listen(addr) }

// Server serves one Replica over the binary protocol. Every connection
// must pass the token challenge first.
type Server struct {
	r      *Replica
	token  []byte
	logger *slog.Logger
	// authLog and closeLog rate-limit per-connection log lines.
	authLog, closeLog *netx.LogLimiter

	maxUnauthenticated int
	connBytes          int64
	bytes              *netx.Budget
}

// NewServer returns a server for r. token must not be empty. logger may
// be nil (logs are discarded).
func NewServer(r *Replica, token string, logger *slog.Logger) (*Server, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: empty token", ErrInvalid)
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Server{
		r: r, token: []byte(token), logger: logger,
		authLog:   netx.NewLogLimiter(time.Second, logger.Warn),
		closeLog:  netx.NewLogLimiter(time.Second, logger.Info),
		connBytes: maxConnBytes, bytes: netx.NewBudget(maxServerBytes),
	}, nil
}

// Serve serves r on ln with token until ctx is done; then it closes ln
// and every connection and returns nil. It does not close r.
func Serve(ctx context.Context, ln net.Listener, r *Replica, token string) error {
	s, err := NewServer(r, token, nil)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln until ctx is done or ln fails; running
// out of file descriptors only delays accepting.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	cfg := netx.Config{MaxUnauthenticated: s.maxUnauthenticated, Log: s.logger.Warn}
	return netx.Serve(ctx, ln, cfg, func(c net.Conn, authed func()) {
		err := s.serveConn(c, authed)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, ErrAuth) {
			s.closeLog.Log("Replica connection closed", "remote", c.RemoteAddr().String(), "error", err)
		}
	})
}

// inFlightBytes is the number of bytes all connections hold.
func (s *Server) inFlightBytes() int64 { return s.bytes.InUse() }

func authMAC(token []byte, side string, sNonce, cNonce []byte) []byte {
	m := hmac.New(sha256.New, token)
	m.Write([]byte("cairn-replica-" + side))
	m.Write(sNonce)
	m.Write(cNonce)
	return m.Sum(nil)
}

// serverHandshake runs the challenge: the server sends a nonce, the client
// answers with its own nonce and an HMAC-SHA256 over both keyed by the
// token, and the server proves knowledge of the token in return. The token
// itself never crosses the wire.
func (s *Server) serverHandshake(c net.Conn, authed func()) error {
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer c.SetDeadline(time.Time{})
	hello := make([]byte, 12+nonceSize)
	copy(hello, protoMagic)
	binary.LittleEndian.PutUint32(hello[8:], protoVersion)
	sNonce := hello[12:]
	rand.Read(sNonce)
	if _, err := c.Write(hello); err != nil {
		return err
	}
	resp := make([]byte, 12+nonceSize+macSize)
	if err := readFull(c, resp); err != nil {
		return err
	}
	if string(resp[:8]) != protoMagic || binary.LittleEndian.Uint32(resp[8:]) != protoVersion {
		reply := make([]byte, 1+macSize)
		reply[0] = 1
		c.Write(reply)
		return fmt.Errorf("%w: bad hello", ErrProtocol)
	}
	cNonce := resp[12 : 12+nonceSize]
	if !hmac.Equal(resp[12+nonceSize:], authMAC(s.token, "client", sNonce, cNonce)) {
		reply := make([]byte, 1+macSize)
		reply[0] = 1
		c.Write(reply)
		return ErrAuth
	}
	// The connection stops counting as unauthenticated before the client
	// learns it is in, so the client never sees its own slot still taken.
	authed()
	reply := append([]byte{0}, authMAC(s.token, "server", sNonce, cNonce)...)
	_, err := c.Write(reply)
	return err
}

type response struct {
	h       respHeader
	payload []byte
	release func()
	// held is the number of budget bytes the request holds.
	held int64
}

func (s *Server) serveConn(c net.Conn, authed func()) error {
	if err := s.serverHandshake(c, authed); err != nil {
		if errors.Is(err, ErrAuth) {
			s.authLog.Log("Replica connection refused: bad token", "remote", c.RemoteAddr().String())
		}
		return err
	}
	budget := netx.NewBudget(s.connBytes)
	unhold := func(n int64) {
		budget.Release(n)
		s.bytes.Release(n)
	}
	out := make(chan response, maxInflight)
	writerDone := make(chan error, 1)
	go func() { writerDone <- writeResponses(c, out, unhold) }()

	// Long requests (PullLayer) stop when their connection goes away.
	connCtx, connGone := context.WithCancel(context.Background())
	defer connGone()
	var handlers sync.WaitGroup
	sem := make(chan struct{}, maxInflight)
	br := bufio.NewReaderSize(c, 64<<10)
	hdr := make([]byte, reqHeaderSize)
	var rerr error
	for {
		var h reqHeader
		var payload, pooled []byte
		if h, rerr = readHeader(br, hdr); rerr != nil {
			break // EOF, or a malformed frame: drop this connection only
		}
		// Hold the request's bytes until its reply is written.
		held := requestBytes(h)
		if rerr = s.hold(connCtx, budget, held); rerr != nil {
			break
		}
		if payload, pooled, rerr = readPayload(br, h); rerr != nil {
			unhold(held)
			break
		}
		sem <- struct{}{}
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			resp := s.handle(connCtx, h, payload)
			putBuf(pooled)
			resp.held = held
			out <- resp
			<-sem
		}()
	}
	connGone() // nobody is left to answer: stop long requests
	handlers.Wait()
	close(out)
	if werr := <-writerDone; rerr == nil {
		rerr = werr
	}
	return rerr
}

// requestBytes is what a request holds in memory until its reply is
// written: its payload, the data a read returns and the reply header.
func requestBytes(h reqHeader) int64 {
	n := int64(h.Payload) + respHeaderSize
	if h.Op == opRead || h.Op == opReadLayer {
		n += int64(min(h.Length, MaxIO))
	}
	return n
}

// hold takes n bytes from the connection's budget, then from the
// server's.
func (s *Server) hold(ctx context.Context, conn *netx.Budget, n int64) error {
	if err := conn.Acquire(ctx, n); err != nil {
		return err
	}
	if err := s.bytes.Acquire(ctx, n); err != nil {
		conn.Release(n)
		return err
	}
	return nil
}

// readRequest reads one request frame; hdr is a reqHeaderSize scratch
// buffer. See readPayload for payload and pooled.
func readRequest(r io.Reader, hdr []byte) (h reqHeader, payload, pooled []byte, err error) {
	if h, err = readHeader(r, hdr); err != nil {
		return h, nil, nil, err
	}
	payload, pooled, err = readPayload(r, h)
	return h, payload, pooled, err
}

// readHeader reads and decodes a request header into the scratch hdr.
func readHeader(r io.Reader, hdr []byte) (reqHeader, error) {
	if err := readFull(r, hdr); err != nil {
		return reqHeader{}, err
	}
	return decodeReqHeader(hdr)
}

// readPayload reads the payload of the request h. It lives in pooled, a
// buffer from the pool to hand back with putBuf once the request is done.
// A WriteLayerExtents payload is placed so that its data starts
// page-aligned: the replica can then write a rebuild's data with O_DIRECT
// straight from the frame.
func readPayload(r io.Reader, h reqHeader) (payload, pooled []byte, err error) {
	n := int(h.Payload)
	if h.Op != opWriteLayerExtents || n < 1 || h.Length > uint64(n)/16 {
		pooled = getBuf(n)
		if err := readFull(r, pooled); err != nil {
			putBuf(pooled)
			return nil, nil, err
		}
		return pooled, pooled, nil
	}
	// name length byte | name | extents x 16 | data
	var nameLen [1]byte
	if err := readFull(r, nameLen[:]); err != nil {
		return nil, nil, err
	}
	prefix := 1 + int(nameLen[0]) + 16*int(h.Length)
	pad := (BlockSize - prefix%BlockSize) % BlockSize
	pooled = getBuf(n + pad)
	payload = pooled[pad : pad+n]
	payload[0] = nameLen[0]
	if err := readFull(r, payload[1:]); err != nil {
		putBuf(pooled)
		return nil, nil, err
	}
	return payload, pooled, nil
}

// writeResponses writes responses in completion order, flushing when no
// more are queued, and gives back each response's held bytes with unhold.
func writeResponses(c net.Conn, out <-chan response, unhold func(int64)) error {
	bw := bufio.NewWriterSize(c, 256<<10)
	hdr := make([]byte, respHeaderSize)
	var err error
	for r := range out {
		if err == nil {
			r.h.Payload = uint32(len(r.payload))
			r.h.encode(hdr)
			if _, err = bw.Write(hdr); err == nil {
				_, err = bw.Write(r.payload)
			}
			if err == nil && len(out) == 0 {
				err = bw.Flush()
			}
			if err != nil {
				c.Close() // unblock the reader
			}
		}
		if r.release != nil {
			r.release()
		}
		unhold(r.held)
	}
	return err
}

func errResponse(h reqHeader, err error) response {
	msg := err.Error()
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	return response{h: respHeader{Op: h.Op, Status: statusOf(err), ID: h.ID}, payload: []byte(msg)}
}

func okResponse(h reqHeader, payload []byte) response {
	return response{h: respHeader{Op: h.Op, ID: h.ID}, payload: payload}
}

func jsonResponse(h reqHeader, v any, err error) response {
	if err != nil {
		return errResponse(h, err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return errResponse(h, err)
	}
	return okResponse(h, b)
}

// ctlRequest is the JSON payload of control operations.
type ctlRequest struct {
	Name    string            `json:"name,omitempty"`
	From    string            `json:"from,omitempty"`
	To      string            `json:"to,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Keep    []string          `json:"keep,omitempty"`
	Receive []SnapshotInfo    `json:"receive,omitempty"`
	// Generation is the ChangedSince argument.
	Generation uint64 `json:"generation,omitempty"`
	// Source is the replica a PullLayer copies from.
	Source string `json:"source,omitempty"`
}

type pullResponse struct {
	Bytes int64 `json:"bytes"`
}

type checksumResponse struct {
	Checksum string `json:"checksum"`
}

func toInt64(v uint64) (int64, error) {
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("%w: %d", ErrOutOfRange, v)
	}
	return int64(v), nil
}

// extentWindow bounds the range of one LayerExtents/Diff request so the
// reply always fits a frame (at most one extent per two blocks).
const extentWindow = 1 << 30

func encodeExtents(ext []Extent) []byte {
	b := make([]byte, 16*len(ext))
	for i, e := range ext {
		binary.LittleEndian.PutUint64(b[16*i:], uint64(e.Offset))
		binary.LittleEndian.PutUint64(b[16*i+8:], uint64(e.Length))
	}
	return b
}

func decodeExtents(b []byte) ([]Extent, error) {
	if len(b)%16 != 0 {
		return nil, fmt.Errorf("%w: extent list of %d bytes", ErrProtocol, len(b))
	}
	ext := make([]Extent, len(b)/16)
	for i := range ext {
		ext[i].Offset = int64(binary.LittleEndian.Uint64(b[16*i:]))
		ext[i].Length = int64(binary.LittleEndian.Uint64(b[16*i+8:]))
	}
	return ext, nil
}

func (s *Server) handle(ctx context.Context, h reqHeader, payload []byte) response {
	r := s.r
	off, err := toInt64(h.Offset)
	if err != nil {
		return errResponse(h, err)
	}
	length, err := toInt64(h.Length)
	if err != nil {
		return errResponse(h, err)
	}
	var ctl ctlRequest
	if h.Op >= opInfo && h.Op != opReadLayer && h.Op != opWriteLayer && h.Op != opWriteLayerExtents && len(payload) > 0 {
		if len(payload) > maxControlPayload {
			return errResponse(h, fmt.Errorf("%w: control payload of %d bytes", ErrTooLarge, len(payload)))
		}
		if err := json.Unmarshal(payload, &ctl); err != nil {
			return errResponse(h, fmt.Errorf("%w: %v", ErrInvalid, err))
		}
	}
	switch h.Op {
	case opRead:
		if length > MaxIO {
			return errResponse(h, fmt.Errorf("%w: read of %d bytes (max %d)", ErrTooLarge, length, MaxIO))
		}
		buf := getBuf(int(length))
		if _, err := r.ReadAt(buf, off); err != nil {
			putBuf(buf)
			return errResponse(h, err)
		}
		resp := okResponse(h, buf)
		resp.release = func() { putBuf(buf) }
		return resp
	case opWrite:
		if int64(len(payload)) != length {
			return errResponse(h, fmt.Errorf("%w: write length %d but %d bytes of data", ErrInvalid, length, len(payload)))
		}
		if _, err := r.WriteAt(payload, off); err != nil {
			return errResponse(h, err)
		}
		return okResponse(h, nil)
	case opFlush:
		return jsonResponse(h, nil, r.Flush())
	case opTrim:
		return jsonResponse(h, nil, r.Trim(off, length))
	case opWriteZeroes:
		return jsonResponse(h, nil, r.WriteZeroes(off, length))
	case opPing:
		return okResponse(h, nil)
	case opInfo:
		return jsonResponse(h, r.Info(), nil)
	case opSetGeneration:
		return jsonResponse(h, nil, r.SetGeneration(h.Offset))
	case opGrow:
		return jsonResponse(h, nil, r.Grow(off))
	case opSnapshot:
		return jsonResponse(h, nil, r.Snapshot(ctl.Name, ctl.Labels))
	case opRevert:
		return jsonResponse(h, nil, r.Revert(ctl.Name))
	case opRemoveSnapshot:
		return jsonResponse(h, nil, r.RemoveSnapshot(ctl.Name))
	case opDiff, opLayerExtents, opChangedSince:
		if length > extentWindow {
			return errResponse(h, fmt.Errorf("%w: extent window of %d bytes (max %d)", ErrTooLarge, length, extentWindow))
		}
		var ext []Extent
		switch h.Op {
		case opDiff:
			ext, err = r.DiffRange(ctl.From, ctl.To, off, length)
		case opChangedSince:
			ext, err = r.ChangedSince(ctl.Generation, off, length)
		default:
			ext, err = r.LayerExtents(ctl.Name, off, length)
		}
		if err != nil {
			return errResponse(h, err)
		}
		return okResponse(h, encodeExtents(ext))
	case opChecksum:
		sum, err := r.Checksum(ctl.Name)
		return jsonResponse(h, checksumResponse{Checksum: sum}, err)
	case opScrub:
		rep, err := r.Scrub()
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return errResponse(h, err)
		}
		return jsonResponse(h, rep, nil) // corruption is in the report
	case opReadLayer:
		name, _, err := splitLayerPayload(payload)
		if err != nil {
			return errResponse(h, err)
		}
		if length > MaxIO {
			return errResponse(h, fmt.Errorf("%w: read of %d bytes (max %d)", ErrTooLarge, length, MaxIO))
		}
		buf := getBuf(int(length))
		if _, err := r.ReadLayer(name, buf, off); err != nil {
			putBuf(buf)
			return errResponse(h, err)
		}
		resp := okResponse(h, buf)
		resp.release = func() { putBuf(buf) }
		return resp
	case opResetForRebuild:
		return jsonResponse(h, nil, r.ResetForRebuild(ctl.Keep, ctl.Receive))
	case opWriteLayer:
		name, data, err := splitLayerPayload(payload)
		if err != nil {
			return errResponse(h, err)
		}
		return jsonResponse(h, nil, r.WriteLayer(name, data, off))
	case opWriteLayerExtents:
		name, body, err := splitLayerPayload(payload)
		if err != nil {
			return errResponse(h, err)
		}
		ext, data, err := splitExtentsPayload(body, h.Length)
		if err != nil {
			return errResponse(h, err)
		}
		return jsonResponse(h, nil, r.WriteLayerExtents(name, ext, data))
	case opCommitLayer:
		return jsonResponse(h, nil, r.CommitLayer(ctl.Name))
	case opPullLayer:
		n, err := s.pullLayer(ctx, ctl.Name, ctl.Source, off, length)
		return jsonResponse(h, pullResponse{Bytes: n}, err)
	}
	return errResponse(h, fmt.Errorf("%w: %d", ErrUnknownOp, h.Op))
}

// pullTimeout bounds one PullLayer request (which also stops when the
// requesting connection closes); callers pull a layer in windows far
// smaller than this takes at any sane disk rate.
const pullTimeout = 30 * time.Minute

// pullLayer copies the allocated extents of layer within [off, off+length)
// from the replica at source into this replica's incomplete layer of that
// name: a rebuild where the data goes straight from source to target
// instead of through the engine. The target authenticates to the source
// with its own token (replicas of one volume share it).
func (s *Server) pullLayer(ctx context.Context, layer, source string, off, length int64) (int64, error) {
	if source == "" {
		return 0, fmt.Errorf("%w: pull needs a source address", ErrInvalid)
	}
	if err := s.r.checkRangeOf(off, length); err != nil {
		return 0, err
	}
	if _, err := s.r.incompleteLayerOf(layer); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	src, err := Dial(ctx, source, string(s.token))
	if err != nil {
		return 0, fmt.Errorf("%w: pull from %s: %v", ErrUnreachable, source, err)
	}
	defer src.Close()
	n, err := copyRange(ctx, src, localSink{s.r}, layer, off, off+length, pullParallel)
	if err != nil {
		return n, fmt.Errorf("pull %q from %s: %w", layer, source, err)
	}
	return n, nil
}

// pullParallel is the number of frames a pull keeps in flight.
const pullParallel = 8

// Buffer pool by power-of-two size class, up to maxPayload.
var bufPools [24]sync.Pool

func sizeClass(n int) int {
	c := 0
	for (4096 << c) < n {
		c++
	}
	return c
}

func getBuf(n int) []byte {
	if n == 0 {
		return nil
	}
	c := sizeClass(n)
	if c >= len(bufPools) {
		return make([]byte, n)
	}
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 4096<<c)
}

func putBuf(b []byte) {
	if cap(b) < 4096 {
		return
	}
	c := sizeClass(cap(b))
	if c < len(bufPools) && cap(b) == 4096<<c {
		bufPools[c].Put(&b)
	}
}
