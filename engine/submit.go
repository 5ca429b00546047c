package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnstore/cairn/replica"
	"github.com/cairnstore/cairn/replica/wire"
)

// IOOp is the operation of an asynchronous Request.
type IOOp uint8

// Asynchronous operations (the same order as the metrics' ops).
const (
	IORead IOOp = iota
	IOWrite
	IOFlush
	IOTrim
	IOWriteZeroes
)

// Request is one asynchronous frontend I/O (see AsyncBackend).
type Request struct {
	Op IOOp
	// Buf is the read destination or the write data.
	Buf []byte
	Off int64
	// Length is the range of a trim or write-zeroes.
	Length int64
	// Done receives the result exactly once, on any goroutine and possibly
	// before Submit returns. It must not block, and must not call into the
	// backend itself: hand further I/O to another goroutine.
	Done func(rq *Request, err error)
	// Tag is the caller's.
	Tag any
}

// AsyncBackend is a Backend that also takes requests without a goroutine
// per request. The NBD frontend uses it when the backend has it.
type AsyncBackend interface {
	Backend
	Submit(rq *Request)
}

var _ AsyncBackend = (*Volume)(nil)

// maxFanout bounds the replicas a request fans out to on the fast path.
const maxFanout = 8

// fanout is one request on the fast path: a leg per target replica, the
// volume's read lock held from Submit until the last leg completes (the
// I/O barrier waits for it like for synchronous I/O).
type fanout struct {
	v     *Volume
	rq    *Request
	op    op
	n     int
	start time.Time
	pend  atomic.Int32
	ok    atomic.Int32
	bad   atomic.Bool
	legs  [maxFanout]ioLeg
	// stripes are the range locks a mutation holds until it completes.
	stripes []uint16
	sbuf    [24]uint16
}

var fanoutPool = sync.Pool{New: func() any {
	f := &fanout{}
	for i := range f.legs {
		l := &f.legs[i]
		l.f, l.Owner = f, l
	}
	return f
}}

// Submit implements AsyncBackend. In the common case (every member healthy,
// no failure being handled, no rebuild or resync) a read goes to one
// replica and a mutation to every healthy one without any goroutine;
// anything else runs the synchronous path on a goroutine.
func (v *Volume) Submit(rq *Request) {
	var o op
	var n int64
	switch rq.Op {
	case IORead:
		o, n = opRead, int64(len(rq.Buf))
	case IOWrite:
		o, n = opWrite, int64(len(rq.Buf))
	case IOFlush:
		o = opFlush
	case IOTrim:
		o, n = opTrim, rq.Length
	case IOWriteZeroes:
		o, n = opZero, rq.Length
	default:
		rq.Done(rq, fmt.Errorf("%w: op %d", ErrInvalid, rq.Op))
		return
	}
	if o != opFlush {
		if err := CheckRange(v.Size(), rq.Off, n); err != nil {
			rq.Done(rq, err)
			return
		}
	}
	if (o == opRead || o == opWrite) && n > replica.MaxIO {
		go v.submitSync(rq)
		return
	}
	v.mu.RLock()
	vw := v.view
	if v.closed || v.pending.Load() || len(vw.healthy) == 0 || len(vw.healthy) > maxFanout ||
		len(vw.rebuilding) > 0 || len(vw.resyncing) > 0 {
		v.mu.RUnlock()
		go v.submitSync(rq)
		return
	}
	f := fanoutPool.Get().(*fanout)
	f.v, f.rq, f.op, f.start = v, rq, o, time.Now()
	f.ok.Store(0)
	f.bad.Store(false)
	if o == opRead {
		m := pickReader(vw.healthy)
		if m == nil {
			v.mu.RUnlock()
			fanoutPool.Put(f)
			go v.submitSync(rq)
			return
		}
		m.inflight.Add(1)
		f.setLeg(0, m, wire.OpRead, rq.Buf, rq.Off, n)
		f.n = 1
	} else {
		if o != opFlush {
			f.stripes = v.locks.stripesFor(rq.Off, n, f.sbuf[:0])
			v.locks.lockStripes(f.stripes)
		}
		for i, m := range vw.healthy {
			switch o {
			case opWrite:
				f.setLeg(i, m, wire.OpWrite, rq.Buf, rq.Off, n)
			case opFlush:
				f.setLeg(i, m, wire.OpFlush, nil, 0, 0)
			case opTrim:
				f.setLeg(i, m, wire.OpTrim, nil, rq.Off, n)
			case opZero:
				f.setLeg(i, m, wire.OpWriteZeroes, nil, rq.Off, n)
			}
		}
		f.n = len(vw.healthy)
	}
	// One count per leg plus one for this loop, so completions racing
	// with it cannot finish the request early.
	f.pend.Store(int32(f.n + 1))
	for i := 0; i < f.n; i++ {
		l := &f.legs[i]
		if l.m.failed.Load() {
			f.ioDone(l, errors.New("replica already failed"))
			continue
		}
		l.m.r.submit(l)
	}
	f.ioDone(nil, nil)
}

func (f *fanout) setLeg(i int, m *member, o uint8, data []byte, off, n int64) {
	l := &f.legs[i]
	l.m, l.Op, l.Data, l.Off, l.Length, l.Prefix = m, o, data, uint64(off), uint64(n), nil
}

// ioDone completes one leg (ioLeg.Done); a nil leg is Submit's own
// reference.
func (f *fanout) ioDone(l *ioLeg, err error) {
	if l != nil {
		if err != nil {
			f.v.fail(l.m, fmt.Errorf("%s: %w", f.op, err))
			f.bad.Store(true)
		} else {
			f.ok.Add(1)
			if f.op != opRead {
				now := time.Now()
				f.v.observeMutation(l.m, now.Sub(f.start), now)
			}
		}
	}
	if f.pend.Add(-1) != 0 {
		return
	}
	v, rq := f.v, f.rq
	if f.op == opRead {
		f.legs[0].m.inflight.Add(-1)
	}
	v.locks.unlockStripes(f.stripes)
	f.stripes = nil
	v.mu.RUnlock()
	if f.bad.Load() {
		// A replica failed: drop it (barrier) and, for a read, retry
		// elsewhere; never on the completing goroutine.
		ok, o, start := f.ok.Load(), f.op, f.start
		f.release()
		go v.finishFailed(rq, o, ok, start)
		return
	}
	v.cfg.Metrics.observe(v.cfg.Name, f.op, int(f.bytes()), f.start, nil)
	f.release()
	rq.Done(rq, nil)
}

func (f *fanout) bytes() int64 {
	switch f.op {
	case opFlush:
		return 0
	case opRead, opWrite:
		return int64(len(f.rq.Buf))
	}
	return f.rq.Length
}

func (f *fanout) release() {
	for i := 0; i < f.n; i++ {
		f.legs[i].m, f.legs[i].Data, f.legs[i].Reply = nil, nil, nil
	}
	f.v, f.rq, f.n = nil, nil, 0
	fanoutPool.Put(f)
}

func (v *Volume) finishFailed(rq *Request, o op, ok int32, start time.Time) {
	v.settle()
	if o == opRead {
		rq.Done(rq, v.ReadAt(context.Background(), rq.Buf, rq.Off))
		return
	}
	if ok == 0 {
		v.cfg.Metrics.observe(v.cfg.Name, o, 0, start, ErrNoHealthyReplica)
		rq.Done(rq, fmt.Errorf("%w: %s failed on every replica", ErrNoHealthyReplica, o))
		return
	}
	n := rq.Length
	if o == opWrite {
		n = int64(len(rq.Buf))
	}
	v.cfg.Metrics.observe(v.cfg.Name, o, int(n), start, nil)
	rq.Done(rq, nil)
}

// submitSync runs a request through the synchronous path.
func (v *Volume) submitSync(rq *Request) {
	ctx := context.Background()
	var err error
	switch rq.Op {
	case IORead:
		err = v.ReadAt(ctx, rq.Buf, rq.Off)
	case IOWrite:
		err = v.WriteAt(ctx, rq.Buf, rq.Off)
	case IOFlush:
		err = v.Flush(ctx)
	case IOTrim:
		err = v.Trim(ctx, rq.Off, rq.Length)
	case IOWriteZeroes:
		err = v.WriteZeroes(ctx, rq.Off, rq.Length)
	}
	rq.Done(rq, err)
}
