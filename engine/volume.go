package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnstore/cairn/internal/netx"
	"github.com/go-logr/logr"
)

// Config describes a volume and how to reach its replicas.
type Config struct {
	// Name is the volume name (the NBD export and FUSE file name).
	Name string
	// Size is the volume size in bytes. Open grows smaller replicas to it
	// and takes a newest replica's larger size (a Grow the configuration
	// has not caught up with); see Volume.Grow.
	Size int64
	// Replicas are the replicas' addresses.
	Replicas []string
	// Dial connects to a replica.
	Dial Dialer
	// IOTimeout bounds one replica I/O; a replica that takes longer is
	// dropped (default 10s).
	IOTimeout time.Duration
	// ControlTimeout bounds one control operation on a replica (default 60s).
	ControlTimeout time.Duration
	// Local reports whether a replica address is on this node; local
	// replicas serve reads first (default: unix: addresses).
	Local func(addr string) bool
	// SlowReplica drops a replica persistently slower than the others
	// (see SlowPolicy; zero fields take its defaults).
	SlowReplica SlowPolicy
	// RebuildWorkers is the number of concurrent copy requests of a rebuild
	// (default 16).
	RebuildWorkers int
	// Log receives state changes.
	Log logr.Logger
	// Metrics, if set, records I/O and replica state.
	Metrics *Metrics
}

type member struct {
	addr   string
	local  bool
	r      *Replica
	mode   ReplicaMode // guarded by Volume.mu
	reason string      // why failed/stale, guarded by Volume.mu
	gen    uint64      // last generation known to be stored on it
	size   int64       // the replica's volume size when probed

	failed   atomic.Bool
	failErr  atomic.Pointer[error]
	inflight atomic.Int64
	copied   atomic.Int64 // rebuild progress in bytes
	toCopy   atomic.Int64
	slow     slowness
	// sessionStart is the replica's SessionStart when the volume opened
	// (resync compares only regions changed since then); 0 if unknown.
	sessionStart uint64
}

// view is the immutable set of replicas I/O uses; replaced under Volume.mu.
type view struct {
	healthy    []*member
	rebuilding []*member
	resyncing  []*member
}

// Volume is the replicated engine of one volume; it implements Backend.
//
// I/O holds mu for reading while it talks to replicas; membership changes
// (dropping a failed replica, starting and finishing a rebuild, snapshot,
// revert) hold it for writing, which is the engine's I/O barrier.
type Volume struct {
	cfg Config
	log logr.Logger
	// size is the volume size: cfg.Size or larger (Grow, adoptSizeLocked)
	size   atomic.Int64
	onGrow atomic.Pointer[func(size int64)]

	mu       sync.RWMutex
	members  []*member
	view     *view
	gen      uint64
	closed   bool
	faulted  bool
	attached func() bool

	ctl     sync.Mutex // serialises control operations (snapshot, rebuild, ...)
	locks   rangeLocks
	pending atomic.Bool // some member failed and is not dropped yet

	rebuildMu     sync.Mutex
	rebuildCancel context.CancelFunc
	rebuildTarget string
	lastRebuild   *RebuildResult
	lastResync    *ResyncResult
}

// Open connects to the replicas, refuses the ones that do not fit (wrong
// size, unreachable), uses only those with the newest generation as healthy
// and marks older ones stale, then stores a new generation on the healthy
// ones so that a replica left out now can never be taken as newest later.
func Open(ctx context.Context, cfg Config) (*Volume, error) {
	if cfg.Size <= 0 || cfg.Size%blockSize != 0 {
		return nil, fmt.Errorf("%w: size %d is not a positive multiple of %d", ErrInvalid, cfg.Size, blockSize)
	}
	if cfg.IOTimeout == 0 {
		cfg.IOTimeout = 10 * time.Second
	}
	if cfg.ControlTimeout == 0 {
		cfg.ControlTimeout = 60 * time.Second
	}
	if cfg.RebuildWorkers == 0 {
		cfg.RebuildWorkers = 16
	}
	if cfg.Local == nil {
		cfg.Local = netx.IsUnix
	}
	cfg.SlowReplica.setDefaults()
	v := &Volume{cfg: cfg, log: cfg.Log.WithValues("volume", cfg.Name)}
	v.size.Store(cfg.Size)
	var wg sync.WaitGroup
	for _, addr := range cfg.Replicas {
		m := &member{addr: addr, local: cfg.Local(addr), mode: ModeFailed}
		v.members = append(v.members, m)
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.probe(ctx, m)
		}()
	}
	wg.Wait()

	var maxGen uint64
	for _, m := range v.members {
		if m.mode == ModeHealthy && m.gen > maxGen {
			maxGen = m.gen
		}
	}
	var reasons []string
	for _, m := range v.members {
		if m.mode == ModeHealthy && m.gen < maxGen {
			m.mode, m.reason = ModeStale, fmt.Sprintf("generation %d is older than %d", m.gen, maxGen)
		}
		if m.mode != ModeHealthy {
			reasons = append(reasons, m.addr+": "+m.reason)
			v.log.Info("Replica not used", "replica", m.addr, "mode", m.mode, "reason", m.reason)
		}
	}
	// An odd generation means the last engine did not shut down cleanly:
	// the newest replicas may differ in blocks written just before.
	dirty := maxGen%2 == 1
	v.gen = maxGen
	v.mu.Lock()
	v.adoptSizeLocked()
	err := v.bumpGenerationLocked()
	if err == nil && dirty {
		v.startResyncLocked(ctx)
	}
	v.mu.Unlock()
	if err != nil {
		v.Close()
		return nil, fmt.Errorf("%w: no usable replica: %s", ErrNoHealthyReplica, strings.Join(reasons, "; "))
	}
	v.log.Info("Volume opened", "generation", v.gen, "healthy", len(v.view.healthy), "resyncing", len(v.view.resyncing),
		"replicas", len(v.members), "uncleanShutdown", dirty)
	if len(v.view.resyncing) > 0 {
		go v.runResync()
	}
	return v, nil
}

// probe connects to a replica and classifies it.
func (v *Volume) probe(ctx context.Context, m *member) {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.ControlTimeout)
	defer cancel()
	r, err := v.dial(ctx, m.addr)
	if err != nil {
		m.mode, m.reason = ModeFailed, "unreachable: "+err.Error()
		return
	}
	info, err := r.Info(ctx)
	m.size = info.Size
	switch {
	case err != nil:
		m.mode, m.reason = ModeFailed, "info: "+err.Error()
	case info.Size%blockSize != 0:
		m.mode, m.reason = ModeFailed, fmt.Sprintf("refused: replica size %d is not a multiple of %d", info.Size, blockSize)
	case info.Rebuilding:
		m.r, m.gen = r, info.Generation
		m.mode, m.reason = ModeStale, "an earlier rebuild did not finish"
		return
	default:
		m.r, m.gen = r, info.Generation
		m.mode = ModeHealthy
		return
	}
	r.Close()
}

// dial connects to a replica and gives its I/O path the volume's timeout.
func (v *Volume) dial(ctx context.Context, addr string) (*Replica, error) {
	r, err := v.cfg.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	r.setIOTimeout(v.cfg.IOTimeout)
	return r, nil
}

// bumpGenerationLocked stores the next odd generation on every healthy and
// resyncing replica, dropping the ones that fail, until it succeeds on all
// remaining ones. Called with mu held.
//
// Generations are odd while an engine has the volume open and even after a
// clean shutdown (Close, after a flush on every replica), so the next Open
// knows whether writes may have been cut short on some replicas only.
func (v *Volume) bumpGenerationLocked() error {
	for {
		if len(v.modeLocked(ModeHealthy)) == 0 {
			// The resync source is gone: a resyncing replica has every
			// write since Open, so it becomes the source.
			if rs := v.modeLocked(ModeResyncing); len(rs) > 0 {
				rs[0].mode, rs[0].reason = ModeHealthy, ""
				v.log.Info("Resync source lost; replica takes over as source", "replica", rs[0].addr)
			}
		}
		healthy := append(v.modeLocked(ModeHealthy), v.modeLocked(ModeResyncing)...)
		if len(healthy) == 0 {
			v.faulted = true
			v.rebuildViewLocked()
			return ErrNoHealthyReplica
		}
		gen := v.gen + 1
		if gen%2 == 0 {
			gen++
		}
		errs := v.parallel(healthy, func(m *member) error {
			ctx, cancel := context.WithTimeout(context.Background(), v.cfg.ControlTimeout)
			defer cancel()
			return m.r.SetGeneration(ctx, gen)
		})
		v.gen = gen
		failed := false
		for i, m := range healthy {
			if errs[i] != nil {
				v.markFailedLocked(m, fmt.Errorf("set generation: %w", errs[i]))
				failed = true
			} else {
				m.gen = gen
			}
		}
		if !failed {
			v.rebuildViewLocked()
			v.cfg.Metrics.setGeneration(v.cfg.Name, gen)
			return nil
		}
	}
}

func (v *Volume) modeLocked(mode ReplicaMode) []*member {
	var out []*member
	for _, m := range v.members {
		if m.mode == mode {
			out = append(out, m)
		}
	}
	return out
}

func (v *Volume) rebuildViewLocked() {
	nv := &view{healthy: v.modeLocked(ModeHealthy), rebuilding: v.modeLocked(ModeRebuilding),
		resyncing: v.modeLocked(ModeResyncing)}
	// Local replicas first: reads prefer them.
	slices.SortStableFunc(nv.healthy, func(a, b *member) int {
		switch {
		case a.local && !b.local:
			return -1
		case b.local && !a.local:
			return 1
		}
		return 0
	})
	v.view = nv
	for _, m := range v.members {
		v.cfg.Metrics.setReplicaMode(v.cfg.Name, m.addr, m.mode)
	}
}

func (v *Volume) markFailedLocked(m *member, err error) {
	if m.mode == ModeFailed {
		return
	}
	was := m.mode
	m.mode, m.reason = ModeFailed, err.Error()
	if m.r != nil {
		m.r.Close()
	}
	v.log.Info("Replica dropped", "replica", m.addr, "was", was, "reason", m.reason)
	if was == ModeRebuilding {
		v.cancelRebuild()
	}
}

// fail records that an I/O on m failed; the member is dropped by settle.
func (v *Volume) fail(m *member, err error) {
	if m.failed.CompareAndSwap(false, true) {
		m.failErr.Store(&err)
		v.pending.Store(true)
	}
}

// settle drops every member that failed an I/O and stores a new generation
// on the survivors before the I/O that saw the failure is acknowledged.
func (v *Volume) settle() {
	if !v.pending.Load() {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.settleLocked()
}

func (v *Volume) settleLocked() {
	if !v.pending.Swap(false) {
		return
	}
	droppedHealthy, droppedAny := false, false
	for _, m := range v.members {
		if m.failed.Load() && (m.mode == ModeHealthy || m.mode == ModeRebuilding || m.mode == ModeResyncing) {
			droppedHealthy = droppedHealthy || m.mode == ModeHealthy || m.mode == ModeResyncing
			droppedAny = true
			var err error = errors.New("failed")
			if p := m.failErr.Load(); p != nil {
				err = *p
			}
			v.markFailedLocked(m, err)
		}
	}
	if droppedHealthy {
		_ = v.bumpGenerationLocked()
	} else if droppedAny {
		v.rebuildViewLocked()
	}
}

// parallel runs fn for every member concurrently (the first inline).
func (v *Volume) parallel(ms []*member, fn func(m *member) error) []error {
	errs := make([]error, len(ms))
	if len(ms) == 1 {
		errs[0] = fn(ms[0])
		return errs
	}
	var wg sync.WaitGroup
	for i := 1; i < len(ms); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(ms[i])
		}()
	}
	if len(ms) > 0 {
		errs[0] = fn(ms[0])
	}
	wg.Wait()
	return errs
}

func (v *Volume) ioCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), v.cfg.IOTimeout)
}

// Size implements Backend.
func (v *Volume) Size() int64 { return v.size.Load() }

// Name is the volume name.
func (v *Volume) Name() string { return v.cfg.Name }

// ReadAt implements Backend: it reads from the first healthy replica (local
// ones first, then the least busy) and fails over to the others.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := CheckRange(v.Size(), off, int64(len(p))); err != nil {
		return err
	}
	start := time.Now()
	for {
		v.mu.RLock()
		if v.closed {
			v.mu.RUnlock()
			return ErrClosed
		}
		m := pickReader(v.view.healthy)
		if m == nil {
			v.mu.RUnlock()
			v.cfg.Metrics.observe(v.cfg.Name, opRead, 0, start, ErrNoHealthyReplica)
			return ErrNoHealthyReplica
		}
		m.inflight.Add(1)
		ictx, cancel := v.ioCtx()
		err := m.r.ReadAt(ictx, p, off)
		cancel()
		m.inflight.Add(-1)
		v.mu.RUnlock()
		if err == nil {
			v.cfg.Metrics.observe(v.cfg.Name, opRead, len(p), start, nil)
			return nil
		}
		v.fail(m, fmt.Errorf("read: %w", err))
		v.settle()
	}
}

func pickReader(healthy []*member) *member {
	var best *member
	for _, m := range healthy {
		if m.failed.Load() {
			continue
		}
		if best == nil {
			best = m
			continue
		}
		if best.local != m.local {
			continue // healthy is sorted local-first
		}
		if m.inflight.Load() < best.inflight.Load() {
			best = m
		}
	}
	return best
}

type mutation struct {
	op   op
	p    []byte // data for writes
	off  int64
	n    int64
	sync bool // flush
}

func (mu *mutation) apply(ctx context.Context, r *Replica) error {
	switch mu.op {
	case opWrite:
		return r.WriteAt(ctx, mu.p, mu.off)
	case opTrim:
		return r.Trim(ctx, mu.off, mu.n)
	case opZero:
		return r.WriteZeroes(ctx, mu.off, mu.n)
	case opFlush:
		return r.Flush(ctx)
	}
	return fmt.Errorf("%w: op %v", ErrInvalid, mu.op)
}

// WriteAt implements Backend: the write is acknowledged once every healthy
// replica has it.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := CheckRange(v.Size(), off, int64(len(p))); err != nil {
		return err
	}
	return v.mutate(&mutation{op: opWrite, p: p, off: off, n: int64(len(p))})
}

// Trim implements Backend.
func (v *Volume) Trim(ctx context.Context, off, length int64) error {
	if err := CheckRange(v.Size(), off, length); err != nil {
		return err
	}
	return v.mutate(&mutation{op: opTrim, off: off, n: length})
}

// WriteZeroes implements Backend.
func (v *Volume) WriteZeroes(ctx context.Context, off, length int64) error {
	if err := CheckRange(v.Size(), off, length); err != nil {
		return err
	}
	return v.mutate(&mutation{op: opZero, off: off, n: length})
}

// Flush implements Backend: every healthy and rebuilding replica flushes.
func (v *Volume) Flush(ctx context.Context) error {
	return v.mutate(&mutation{op: opFlush})
}

func (v *Volume) mutate(mu *mutation) error {
	start := time.Now()
	v.mu.RLock()
	if v.closed {
		v.mu.RUnlock()
		return ErrClosed
	}
	vw := v.view
	if len(vw.healthy) == 0 {
		v.mu.RUnlock()
		v.cfg.Metrics.observe(v.cfg.Name, mu.op, 0, start, ErrNoHealthyReplica)
		return ErrNoHealthyReplica
	}
	var unlock func()
	if mu.op != opFlush {
		unlock = v.locks.lock(mu.off, mu.n)
	}
	// Healthy and resyncing members take every mutation and count for
	// the acknowledgement; rebuilding ones take aligned ones here and
	// the aligned equivalent of the others below.
	targets := vw.healthy
	nfull := len(vw.healthy) + len(vw.resyncing)
	if len(vw.resyncing) > 0 {
		targets = append(slices.Clip(targets), vw.resyncing...)
	}
	aligned := mu.op == opFlush || (mu.off%blockSize == 0 && mu.n%blockSize == 0)
	if aligned && len(vw.rebuilding) > 0 {
		targets = append(slices.Clip(targets), vw.rebuilding...)
	}
	errs := v.parallel(targets, func(m *member) error {
		if m.failed.Load() {
			return errors.New("replica already failed")
		}
		ctx, cancel := v.ioCtx()
		defer cancel()
		start := time.Now()
		err := mu.apply(ctx, m.r)
		if err == nil && m.mode == ModeHealthy {
			now := time.Now()
			v.observeMutation(m, now.Sub(start), now)
		}
		return err
	})
	ok := 0
	for i, m := range targets {
		if errs[i] != nil {
			v.fail(m, fmt.Errorf("%s: %w", mu.op, errs[i]))
		} else if i < nfull {
			ok++
		}
	}
	if !aligned && ok > 0 {
		for _, m := range vw.rebuilding {
			if err := v.applyUnaligned(vw.healthy, m, mu); err != nil {
				v.fail(m, fmt.Errorf("%s (rebuild): %w", mu.op, err))
			}
		}
	}
	if unlock != nil {
		unlock()
	}
	v.mu.RUnlock()
	v.settle()
	if ok == 0 {
		v.cfg.Metrics.observe(v.cfg.Name, mu.op, 0, start, ErrNoHealthyReplica)
		return fmt.Errorf("%w: %s failed on every replica: %v", ErrNoHealthyReplica, mu.op, errors.Join(errs...))
	}
	v.cfg.Metrics.observe(v.cfg.Name, mu.op, int(mu.n), start, nil)
	return nil
}

const blockSize = 4096

// applyUnaligned gives a rebuilding replica the block-aligned equivalent of
// an unaligned mutation: the aligned middle as is, the partial edge blocks as
// full-block writes of what the healthy replicas now hold. The caller holds
// the range lock, so no other write can change those blocks meanwhile.
func (v *Volume) applyUnaligned(healthy []*member, target *member, mu *mutation) error {
	a0 := mu.off &^ (blockSize - 1)
	a1 := (mu.off + mu.n + blockSize - 1) &^ (blockSize - 1)
	ctx, cancel := v.ioCtx()
	defer cancel()
	readHealthy := func(p []byte, off int64) error {
		var err error
		for _, m := range healthy {
			if m.failed.Load() {
				continue
			}
			if err = m.r.ReadAt(ctx, p, off); err == nil {
				return nil
			}
			v.fail(m, fmt.Errorf("read: %w", err))
		}
		if err == nil {
			err = ErrNoHealthyReplica
		}
		return err
	}
	if mu.op == opWrite {
		// Whole aligned span: edges from a healthy replica, middle from p.
		buf := make([]byte, a1-a0)
		if a0 < mu.off {
			if err := readHealthy(buf[:blockSize], a0); err != nil {
				return err
			}
		}
		if end := mu.off + mu.n; end < a1 {
			if err := readHealthy(buf[len(buf)-blockSize:], a1-blockSize); err != nil {
				return err
			}
		}
		copy(buf[mu.off-a0:], mu.p)
		return target.r.WriteAt(ctx, buf, a0)
	}
	// Trim or zero: the aligned inside keeps its op, the partial edge blocks
	// become full-block writes of what the healthy replicas hold now.
	end := mu.off + mu.n
	in0, in1 := (mu.off+blockSize-1)&^(blockSize-1), end&^(blockSize-1)
	if in1 > in0 {
		inner := &mutation{op: mu.op, off: in0, n: in1 - in0}
		if err := inner.apply(ctx, target.r); err != nil {
			return err
		}
	}
	var edges []int64
	if mu.off%blockSize != 0 {
		edges = append(edges, a0)
	}
	if e := end &^ (blockSize - 1); end%blockSize != 0 && (len(edges) == 0 || edges[0] != e) {
		edges = append(edges, e)
	}
	blk := make([]byte, blockSize)
	for _, e := range edges {
		if err := readHealthy(blk, e); err != nil {
			return err
		}
		if err := target.r.WriteAt(ctx, blk, e); err != nil {
			return err
		}
	}
	return nil
}

// Generation is the volume's current generation.
func (v *Volume) Generation() uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.gen
}

// Close flushes every healthy replica and, if all of them flushed and no
// resync is unfinished, stores the next (even) generation on them: the
// mark of a clean shutdown, so the next Open trusts them without a resync.
// Then it closes every replica connection; I/O after Close fails.
func (v *Volume) Close() error {
	v.cancelRebuild()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	v.settleLocked()
	v.markCleanLocked()
	for _, m := range v.members {
		if m.r != nil && m.mode != ModeFailed {
			m.r.Close()
		}
	}
	return nil
}
