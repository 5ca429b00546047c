package replica

import (
	"bufio"
	"context"
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
	"github.com/cairnstore/cairn/replica/wire"
)

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
// must pass the token challenge first, and over TCP TLS before that.
type Server struct {
	r     *Replica
	token []byte
	cred  *wire.Credentials
	// plaintextTCP serves TCP without TLS (netx.SetPlaintextTCP at
	// NewServer).
	plaintextTCP bool
	logger       *slog.Logger
	// authLog and closeLog rate-limit per-connection log lines.
	authLog, closeLog *netx.LogLimiter

	maxUnauthenticated int
	connBytes          int64
	bytes              *netx.Budget
}

// NewServer returns a server for r. token must not be empty. logger may
// be nil (logs are discarded).
func NewServer(r *Replica, token string, logger *slog.Logger) (*Server, error) {
	cred, err := wire.NewCredentials(token)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Server{
		r: r, token: []byte(token), cred: cred, logger: logger,
		plaintextTCP: netx.PlaintextTCP(),
		authLog:      netx.NewLogLimiter(time.Second, logger.Warn),
		closeLog:     netx.NewLogLimiter(time.Second, logger.Info),
		connBytes:    maxConnBytes, bytes: netx.NewBudget(maxServerBytes),
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

// serverHandshake authenticates the client (wire.ServerHandshake), over
// TLS when c came over TCP, and returns the connection to serve.
func (s *Server) serverHandshake(c net.Conn, authed func()) (net.Conn, error) {
	return wire.ServerHandshake(c, s.cred, !netx.IsUnixConn(c) && !s.plaintextTCP, authed)
}

type response struct {
	h       wire.RespHeader
	payload []byte
	release func()
	// held is the number of budget bytes the request holds.
	held int64
}

// inlineMax is the largest write, or read of cached data, the
// connection's reader handles itself instead of on a goroutine of its own:
// a buffered pwrite or pread of a few pages takes microseconds, less than
// handing it over costs.
const inlineMax = 64 << 10

func (s *Server) serveConn(c net.Conn, authed func()) error {
	conn, err := s.serverHandshake(c, authed)
	if err != nil {
		if errors.Is(err, ErrAuth) {
			s.authLog.Log("Replica connection refused", "remote", c.RemoteAddr().String(), "reason", err.Error())
		}
		return err
	}
	c = conn
	budget := netx.NewBudget(s.connBytes)
	w := &replyWriter{c: c, bw: bufio.NewWriterSize(c, 256<<10), unhold: func(n int64) {
		budget.Release(n)
		s.bytes.Release(n)
	}}
	out := make(chan response, wire.MaxInflight)
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); w.run(out) }()

	// Long requests (PullLayer) stop when their connection goes away.
	connCtx, connGone := context.WithCancel(context.Background())
	defer connGone()
	var handlers sync.WaitGroup
	sem := make(chan struct{}, wire.MaxInflight)
	br := bufio.NewReaderSize(c, 64<<10)
	hdr := make([]byte, wire.ReqHeaderSize)
	var rerr error
	for {
		var h wire.ReqHeader
		var payload, pooled []byte
		// Replies to the requests handled inline go out together once
		// every request that arrived with them is handled.
		if br.Buffered() == 0 {
			w.flush()
		}
		if h, rerr = readHeader(br, hdr); rerr != nil {
			break // EOF, or a malformed frame: drop this connection only
		}
		// Hold the request's bytes until its reply is written.
		held := requestBytes(h)
		if rerr = s.hold(connCtx, budget, held); rerr != nil {
			break
		}
		if payload, pooled, rerr = readPayload(br, h); rerr != nil {
			w.unhold(held)
			break
		}
		if resp, ok := s.handleInline(h, payload); ok {
			putBuf(pooled)
			resp.held = held
			w.put(resp, false)
			continue
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
	<-writerDone
	w.flush()
	if werr := w.error(); rerr == nil {
		rerr = werr
	}
	return rerr
}

// handleInline handles a request on the connection's reader when that
// costs less than a hand-off and cannot wait for the disk: a small write
// (into the page cache) or a small read of cached data. ok is false when
// the request must run on a goroutine of its own.
func (s *Server) handleInline(h wire.ReqHeader, payload []byte) (resp response, ok bool) {
	switch {
	case h.Op == wire.OpWrite && len(payload) <= inlineMax:
		return s.handle(context.Background(), h, payload), true
	case h.Op == wire.OpRead && h.Length <= inlineMax && h.Offset <= math.MaxInt64:
		buf := getBuf(int(h.Length))
		err := s.r.ReadCached(buf, int64(h.Offset))
		if errors.Is(err, errNotCached) {
			putBuf(buf)
			return response{}, false
		}
		if err != nil {
			putBuf(buf)
			return errResponse(h, err), true
		}
		resp := okResponse(h, buf)
		resp.release = func() { putBuf(buf) }
		return resp, true
	}
	return response{}, false
}

// replyWriter writes a connection's replies: those of requests handled
// inline by the connection's reader, which flushes them before it waits
// for more requests, and those of requests handled on goroutines, which
// run writes and flushes whenever no more of them are queued.
type replyWriter struct {
	c      net.Conn
	unhold func(int64)

	mu  sync.Mutex
	bw  *bufio.Writer
	hdr [wire.RespHeaderSize]byte
	err error
}

// run writes the replies sent on out until it is closed.
func (w *replyWriter) run(out <-chan response) {
	for r := range out {
		w.put(r, len(out) == 0)
	}
}

// put writes r (after a write error: drops it) and gives back its held
// bytes; with flush, everything written so far is sent.
func (w *replyWriter) put(r response, flush bool) {
	w.mu.Lock()
	if w.err == nil {
		r.h.Payload = uint32(len(r.payload))
		r.h.Encode(w.hdr[:])
		if _, w.err = w.bw.Write(w.hdr[:]); w.err == nil {
			_, w.err = w.bw.Write(r.payload)
		}
		if w.err == nil && flush {
			w.err = w.bw.Flush()
		}
		if w.err != nil {
			w.c.Close() // unblock the reader
		}
	}
	w.mu.Unlock()
	if r.release != nil {
		r.release()
	}
	w.unhold(r.held)
}

// flush sends every reply written so far.
func (w *replyWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil && w.bw.Buffered() > 0 {
		if w.err = w.bw.Flush(); w.err != nil {
			w.c.Close()
		}
	}
}

func (w *replyWriter) error() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// requestBytes is what a request holds in memory until its reply is
// written: its payload, the data a read returns and the reply header.
func requestBytes(h wire.ReqHeader) int64 {
	n := int64(h.Payload) + wire.RespHeaderSize
	if wire.ReadsInto(h.Op) {
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

// readRequest reads one request frame; hdr is a wire.ReqHeaderSize scratch
// buffer. See readPayload for payload and pooled.
func readRequest(r io.Reader, hdr []byte) (h wire.ReqHeader, payload, pooled []byte, err error) {
	if h, err = readHeader(r, hdr); err != nil {
		return h, nil, nil, err
	}
	payload, pooled, err = readPayload(r, h)
	return h, payload, pooled, err
}

// readHeader reads and decodes a request header into the scratch hdr.
func readHeader(r io.Reader, hdr []byte) (wire.ReqHeader, error) {
	if _, err := io.ReadFull(r, hdr); err != nil {
		return wire.ReqHeader{}, err
	}
	return wire.DecodeReqHeader(hdr)
}

// readPayload reads the payload of the request h. It lives in pooled, a
// buffer from the pool to hand back with putBuf once the request is done.
// A WriteLayerExtents payload is placed so that its data starts
// page-aligned: the replica can then write a rebuild's data with O_DIRECT
// straight from the frame.
func readPayload(r io.Reader, h wire.ReqHeader) (payload, pooled []byte, err error) {
	n := int(h.Payload)
	if h.Op != wire.OpWriteLayerExtents || n < 1 || h.Length > uint64(n)/16 {
		pooled = getBuf(n)
		if _, err := io.ReadFull(r, pooled); err != nil {
			putBuf(pooled)
			return nil, nil, err
		}
		return pooled, pooled, nil
	}
	// name length byte | name | extents x 16 | data
	var nameLen [1]byte
	if _, err := io.ReadFull(r, nameLen[:]); err != nil {
		return nil, nil, err
	}
	prefix := 1 + int(nameLen[0]) + 16*int(h.Length)
	pad := (BlockSize - prefix%BlockSize) % BlockSize
	pooled = getBuf(n + pad)
	payload = pooled[pad : pad+n]
	payload[0] = nameLen[0]
	if _, err := io.ReadFull(r, payload[1:]); err != nil {
		putBuf(pooled)
		return nil, nil, err
	}
	return payload, pooled, nil
}

func errResponse(h wire.ReqHeader, err error) response {
	msg := err.Error()
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	return response{h: wire.RespHeader{Op: h.Op, Status: wire.StatusOf(err), ID: h.ID}, payload: []byte(msg)}
}

func okResponse(h wire.ReqHeader, payload []byte) response {
	return response{h: wire.RespHeader{Op: h.Op, ID: h.ID}, payload: payload}
}

func jsonResponse(h wire.ReqHeader, v any, err error) response {
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

func (s *Server) handle(ctx context.Context, h wire.ReqHeader, payload []byte) response {
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
	if wire.IsControl(h.Op) && len(payload) > 0 {
		if len(payload) > wire.MaxControlPayload {
			return errResponse(h, fmt.Errorf("%w: control payload of %d bytes", ErrTooLarge, len(payload)))
		}
		if err := json.Unmarshal(payload, &ctl); err != nil {
			return errResponse(h, fmt.Errorf("%w: %v", ErrInvalid, err))
		}
	}
	switch h.Op {
	case wire.OpRead:
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
	case wire.OpWrite:
		if int64(len(payload)) != length {
			return errResponse(h, fmt.Errorf("%w: write length %d but %d bytes of data", ErrInvalid, length, len(payload)))
		}
		if _, err := r.WriteAt(payload, off); err != nil {
			return errResponse(h, err)
		}
		return okResponse(h, nil)
	case wire.OpFlush:
		return jsonResponse(h, nil, r.Flush())
	case wire.OpTrim:
		return jsonResponse(h, nil, r.Trim(off, length))
	case wire.OpWriteZeroes:
		return jsonResponse(h, nil, r.WriteZeroes(off, length))
	case wire.OpPing:
		return okResponse(h, nil)
	case wire.OpInfo:
		return jsonResponse(h, r.Info(), nil)
	case wire.OpSetGeneration:
		return jsonResponse(h, nil, r.SetGeneration(h.Offset))
	case wire.OpGrow:
		return jsonResponse(h, nil, r.Grow(off))
	case wire.OpSnapshot:
		return jsonResponse(h, nil, r.Snapshot(ctl.Name, ctl.Labels))
	case wire.OpRevert:
		return jsonResponse(h, nil, r.Revert(ctl.Name))
	case wire.OpRemoveSnapshot:
		return jsonResponse(h, nil, r.RemoveSnapshot(ctl.Name))
	case wire.OpDiff, wire.OpLayerExtents, wire.OpChangedSince:
		if length > wire.ExtentWindow {
			return errResponse(h, fmt.Errorf("%w: extent window of %d bytes (max %d)", ErrTooLarge, length, wire.ExtentWindow))
		}
		var ext []Extent
		switch h.Op {
		case wire.OpDiff:
			ext, err = r.DiffRange(ctl.From, ctl.To, off, length)
		case wire.OpChangedSince:
			ext, err = r.ChangedSince(ctl.Generation, off, length)
		default:
			ext, err = r.LayerExtents(ctl.Name, off, length)
		}
		if err != nil {
			return errResponse(h, err)
		}
		return okResponse(h, encodeExtents(nil, ext))
	case wire.OpChecksum:
		sum, err := r.Checksum(ctl.Name)
		return jsonResponse(h, checksumResponse{Checksum: sum}, err)
	case wire.OpScrub:
		rep, err := r.Scrub()
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return errResponse(h, err)
		}
		return jsonResponse(h, rep, nil) // corruption is in the report
	case wire.OpReadLayer:
		name, _, err := wire.SplitLayerPayload(payload)
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
	case wire.OpResetForRebuild:
		return jsonResponse(h, nil, r.ResetForRebuild(ctl.Keep, ctl.Receive))
	case wire.OpWriteLayer:
		name, data, err := wire.SplitLayerPayload(payload)
		if err != nil {
			return errResponse(h, err)
		}
		return jsonResponse(h, nil, r.WriteLayer(name, data, off))
	case wire.OpWriteLayerExtents:
		name, body, err := wire.SplitLayerPayload(payload)
		if err != nil {
			return errResponse(h, err)
		}
		ext, data, err := splitExtentsPayload(body, h.Length)
		if err != nil {
			return errResponse(h, err)
		}
		return jsonResponse(h, nil, r.WriteLayerExtents(name, ext, data))
	case wire.OpCommitLayer:
		return jsonResponse(h, nil, r.CommitLayer(ctl.Name))
	case wire.OpPullLayer:
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

// Buffer pool by power-of-two size class, up to wire.MaxPayload.
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
