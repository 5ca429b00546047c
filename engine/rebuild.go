package engine

import (
	"context"
	"errors"
	"fmt"
	"github.com/cairnstore/cairn/replica"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// RebuildResult describes the last rebuild.
type RebuildResult struct {
	Replica  string    `json:"replica"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Layers are the layers copied (those the replica lacked).
	Layers []string `json:"layers,omitempty"`
	// Bytes is the amount of data copied.
	Bytes int64 `json:"bytes"`
	// Relayed is true when the data passed through the engine because the
	// target could not pull it from the source itself.
	Relayed bool `json:"relayed,omitempty"`
	// CaughtUp is true when the replica returned with the volume's chain
	// and only the regions written since it left were compared and
	// repaired (Bytes is then the amount rewritten); no layer was copied.
	CaughtUp bool `json:"caughtUp,omitempty"`
	// Error is empty when the rebuild succeeded.
	Error string `json:"error,omitempty"`
}

// rebuildSnapshotPrefix names the snapshot a rebuild takes to freeze the
// head it copies. The newest one stays (a replica that drops out later
// copies only newer layers); older ones are pruned once every member is
// healthy.
const rebuildSnapshotPrefix = "cairn-rebuild-"

func (v *Volume) cancelRebuild() {
	v.rebuildMu.Lock()
	if v.rebuildCancel != nil {
		v.rebuildCancel()
	}
	v.rebuildMu.Unlock()
}

// Rebuilding returns the address of the replica being rebuilt, or "".
func (v *Volume) Rebuilding() string {
	v.rebuildMu.Lock()
	defer v.rebuildMu.Unlock()
	return v.rebuildTarget
}

// Rebuild adds the replica at addr to the volume (or takes back a stale or
// failed member) and copies what it lacks, while I/O continues:
//
//  1. Under the I/O barrier: flush and snapshot every healthy replica (so
//     everything written so far sits in immutable layers), have the target
//     keep the committed layers it shares with a healthy source (by name)
//     and open empty incomplete layers for the rest plus a new head, and
//     start sending it every write (block-aligned) as a write-only member.
//  2. Copy the allocated extents of each incomplete layer from the source's
//     immutable layer and commit it. Live writes only touch the target's
//     head, so the copy cannot overwrite them.
//  3. Under the barrier: flush the target, store the volume's generation on
//     it and make it healthy; then, with every member healthy, drop the
//     older rebuild snapshots everywhere (the newest one stays).
//
// A replica that returns after a short outage already holds the older
// layers, so only the layers written since its last common snapshot move.
func (v *Volume) Rebuild(ctx context.Context, addr string) (res RebuildResult, err error) {
	if !v.ctl.TryLock() {
		return res, fmt.Errorf("%w: another control operation is running", ErrBusy)
	}
	defer v.ctl.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	v.rebuildMu.Lock()
	v.rebuildCancel, v.rebuildTarget = cancel, addr
	v.rebuildMu.Unlock()
	res = RebuildResult{Replica: addr, Started: time.Now()}
	defer func() {
		res.Finished = time.Now()
		if err != nil {
			res.Error = err.Error()
			lg := v.log
			if errors.Is(err, ErrReplicaRefused) {
				lg = lg.V(1) // an unreachable replica is retried quietly
			}
			lg.Info("Rebuild failed", "replica", addr, "err", err.Error())
		} else {
			v.log.Info("Rebuild finished", "replica", addr, "bytes", res.Bytes, "layers", len(res.Layers),
				"seconds", res.Finished.Sub(res.Started).Seconds())
		}
		v.rebuildMu.Lock()
		v.rebuildCancel, v.rebuildTarget = nil, ""
		r := res
		v.lastRebuild = &r
		v.rebuildMu.Unlock()
	}()

	m, err := v.knownMember(addr)
	if err != nil {
		return res, err
	}
	r, info, err := v.dialTarget(ctx, addr)
	if err != nil {
		// A refused add changes nothing; a known member records why.
		if m != nil {
			v.setReason(m, "rebuild: "+err.Error())
		}
		return res, err
	}
	if m == nil {
		if m, err = v.addMember(addr); err != nil {
			r.Close()
			return res, err
		}
	}

	if ok, n, err := v.catchUp(m, r, info); ok {
		res.CaughtUp, res.Bytes = true, n
		if err != nil {
			return res, err
		}
		return res, v.promote(m)
	}

	snap := fmt.Sprintf("%s%d", rebuildSnapshotPrefix, time.Now().UnixNano())
	src, layers, err := v.startRebuild(ctx, m, r, info, snap)
	if err != nil {
		return res, err
	}
	res.Layers = layers
	// Snapshots may be taken while the layers are copied, as long as the
	// target is a rebuilding member (they land on every replica, the
	// target included, above the received layers).
	// The rebuild snapshot stays (only older ones are pruned): it lets a
	// replica that drops out later come back by copying only newer layers.
	for _, layer := range layers {
		if rebuildCopyHook != nil {
			rebuildCopyHook()
		}
		n, relayed, err := v.copyLayer(ctx, src, m, layer)
		res.Bytes += n
		res.Relayed = res.Relayed || relayed
		if err != nil {
			return res, v.abortRebuild(m, fmt.Errorf("copy layer %s: %w", layer, err))
		}
		cctx, ccancel := context.WithTimeout(ctx, v.cfg.ControlTimeout)
		err = m.r.CommitLayer(cctx, layer)
		ccancel()
		if err != nil {
			return res, v.abortRebuild(m, fmt.Errorf("commit layer %s: %w", layer, err))
		}
	}
	if err := v.promote(m); err != nil {
		return res, err
	}
	v.pruneRebuildSnapshots()
	return res, nil
}

// pruneRebuildSnapshots removes every rebuild snapshot but the newest once
// all members are healthy: none of them can still need an older one to
// come back incrementally (a failed or stale member keeps them all, so it
// copies only newer layers when it returns). On the replicas this is a
// merge of the small newer layer down into the older one. Callers hold
// v.ctl; errors are logged, the rebuild itself has succeeded.
func (v *Volume) pruneRebuildSnapshots() {
	v.mu.RLock()
	all := len(v.view.healthy) == len(v.members)
	v.mu.RUnlock()
	if !all {
		return
	}
	snaps, err := v.Snapshots(context.Background())
	if err != nil {
		v.log.Info("Cannot list snapshots to prune rebuild snapshots", "err", err.Error())
		return
	}
	old := rebuildSnapshotsToPrune(snaps)
	for _, name := range old {
		if err := v.removeSnapshot(name); err != nil {
			v.log.Info("Cannot remove an old rebuild snapshot", "snapshot", name, "err", err.Error())
			return
		}
	}
	if len(old) > 0 {
		v.log.Info("Removed old rebuild snapshots", "snapshots", old)
	}
}

// rebuildSnapshotsToPrune returns the rebuild snapshots of a chain (oldest
// first) except the newest one.
func rebuildSnapshotsToPrune(chain []replica.SnapshotInfo) []string {
	var names []string
	for _, s := range chain {
		if strings.HasPrefix(s.Name, rebuildSnapshotPrefix) && s.Labels["cairn.dev/purpose"] == "rebuild" {
			names = append(names, s.Name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	return names[:len(names)-1]
}

// knownMember returns the member for addr, or nil for a replica not yet in
// the volume; a healthy, rebuilding or resyncing member cannot be rebuilt.
func (v *Volume) knownMember(addr string) (*member, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil, ErrClosed
	}
	for _, m := range v.members {
		if m.addr == addr {
			if m.mode == ModeHealthy || m.mode == ModeRebuilding || m.mode == ModeResyncing {
				return nil, fmt.Errorf("%w: replica %s is %s", ErrBusy, addr, m.mode)
			}
			return m, nil
		}
	}
	return nil, nil
}

// addMember lists a new replica as stale, to be rebuilt.
func (v *Volume) addMember(addr string) (*member, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil, ErrClosed
	}
	m := &member{addr: addr, local: v.cfg.Local(addr), mode: ModeStale, reason: "added, waiting for rebuild"}
	v.members = append(v.members, m)
	v.rebuildViewLocked()
	return m, nil
}

// dialTarget connects to a rebuild target and checks it is not larger
// than the volume (a smaller one is grown when it joins, under the
// barrier); any failure is ErrReplicaRefused. It gives up after the
// control timeout: a target that accepted the connection but does not
// answer (a stopped process) must not hold the control lock for ever.
func (v *Volume) dialTarget(ctx context.Context, addr string) (*Replica, replica.Info, error) {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.ControlTimeout)
	defer cancel()
	r, err := v.dial(ctx, addr)
	if err != nil {
		return nil, replica.Info{}, fmt.Errorf("%w: %s: unreachable: %v", ErrReplicaRefused, addr, err)
	}
	info, err := r.Info(ctx)
	switch {
	case err != nil:
		err = fmt.Errorf("%w: %s: %v", ErrReplicaRefused, addr, err)
	case info.Size > v.Size():
		err = fmt.Errorf("%w: replica size %d exceeds volume size %d", ErrReplicaRefused, info.Size, v.Size())
	}
	if err != nil {
		r.Close()
		return nil, replica.Info{}, err
	}
	return r, info, nil
}

func (v *Volume) setReason(m *member, reason string) {
	v.mu.Lock()
	m.reason = reason
	v.mu.Unlock()
}

// startRebuild runs step 1 under the barrier and returns the source and the
// layers the target must receive, oldest first.
func (v *Volume) startRebuild(ctx context.Context, m *member, r *Replica, tinfo replica.Info, snap string) (*member, []string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	fail := func(err error) (*member, []string, error) {
		r.Close()
		m.reason = "rebuild: " + err.Error()
		return nil, nil, err
	}
	if v.closed {
		return fail(ErrClosed)
	}
	if err := v.snapshotLocked(snap, map[string]string{"cairn.dev/purpose": "rebuild"}, nil); err != nil {
		return fail(err)
	}
	src := pickReader(v.view.healthy)
	if src == nil {
		return fail(ErrNoHealthyReplica)
	}
	cctx, cancel := context.WithTimeout(ctx, v.cfg.ControlTimeout)
	defer cancel()
	sinfo, err := src.r.Info(cctx)
	if err != nil {
		v.fail(src, fmt.Errorf("info: %w", err))
		v.settleLocked()
		return fail(fmt.Errorf("source %s: %w", src.addr, err))
	}
	if err := r.Grow(cctx, v.Size()); err != nil {
		return fail(fmt.Errorf("grow to %d: %w", v.Size(), err))
	}
	keep, receive := commonPrefix(tinfo.Snapshots, sinfo.Snapshots)
	if err := r.ResetForRebuild(cctx, keep, receive); err != nil {
		return fail(fmt.Errorf("reset for rebuild: %w", err))
	}
	var layers []string
	for _, s := range receive {
		layers = append(layers, s.Name)
	}
	v.joinLocked(m, r, ModeRebuilding, "")
	v.log.Info("Rebuild started", "replica", m.addr, "source", src.addr, "layers", layers)
	return src, layers, nil
}

// commonPrefix splits the source chain into the snapshots the target
// already holds (same name and snapshot uid, committed, in the same order
// from the bottom) and those it must receive. The uid label tells apart a
// snapshot that was removed and created again under the same name.
func commonPrefix(target, source []replica.SnapshotInfo) (keep []string, receive []replica.SnapshotInfo) {
	i := 0
	for ; i < len(target) && i < len(source); i++ {
		t, s := target[i], source[i]
		if t.Incomplete || t.Name != s.Name || t.Labels[SnapshotUIDLabel] != s.Labels[SnapshotUIDLabel] {
			break
		}
		keep = append(keep, t.Name)
	}
	return keep, source[i:]
}

// abortRebuild drops the target after a failed copy; it keeps what it
// received and can be rebuilt again.
func (v *Volume) abortRebuild(m *member, err error) error {
	v.fail(m, err)
	v.settle()
	return err
}

// catchUp brings back a replica that holds the volume's snapshot chain and
// missed only writes made since the generation it stored: under the
// barrier it asks a healthy source which regions changed since then (the
// source's change tracking covers every write issued after that
// generation, including those in flight when the replica left) and joins
// the replica as a resyncing member, which takes every write from then
// on; those regions are then compared and repaired under the range locks
// like a resync after a crash. ok is false (and r untouched) when it does
// not apply: different chain, no tracking that far back; the caller then
// rebuilds from layers.
func (v *Volume) catchUp(m *member, r *Replica, info replica.Info) (ok bool, repaired int64, err error) {
	src, ext := v.startCatchUp(m, r, info)
	if src == nil {
		return false, 0, nil
	}
	v.log.Info("Replica returning: repairing the regions written since it left", "replica", m.addr,
		"source", src.addr, "sinceGeneration", info.Generation)
	n, err := v.repairRegions(src, []*member{m}, ext, true)
	v.settle()
	if err != nil {
		v.fail(m, fmt.Errorf("catch-up: %w", err))
		v.settle()
		return true, n, err
	}
	return true, n, nil
}

// startCatchUp checks under the barrier that catchUp applies and, if so,
// joins m as a resyncing member; it returns the source and the regions to
// repair, or a nil source.
func (v *Volume) startCatchUp(m *member, r *Replica, info replica.Info) (*member, []replica.Extent) {
	if info.Rebuilding || info.Generation == 0 {
		return nil, nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	src := pickReader(v.view.healthy)
	if src == nil || v.closed || info.Generation >= v.gen {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), v.cfg.ControlTimeout)
	defer cancel()
	sinfo, err := src.r.Info(ctx)
	if err != nil || !sameChain(sinfo.Snapshots, info.Snapshots) {
		return nil, nil
	}
	ext, err := src.r.ChangedSince(ctx, info.Generation, v.Size())
	if err != nil {
		return nil, nil // not tracked that far back
	}
	// a replica that missed a Grow takes it before it joins (the new
	// range is zeroes on it; what was written there since is in ext)
	if err := r.Grow(ctx, v.Size()); err != nil {
		return nil, nil
	}
	v.joinLocked(m, r, ModeResyncing, "returning: repairing what changed from "+src.addr)
	return src, mergeExtents(ext)
}

// joinLocked makes r the connection of m, which takes every write from now
// on in mode (rebuilding or resyncing). Callers hold mu for writing.
func (v *Volume) joinLocked(m *member, r *Replica, mode ReplicaMode, reason string) {
	if m.r != nil && m.r != r && m.mode != ModeFailed {
		m.r.Close()
	}
	m.r, m.reason, m.mode = r, reason, mode
	m.failed.Store(false)
	m.failErr.Store(nil)
	m.copied.Store(0)
	m.toCopy.Store(0)
	m.slow.avg.Store(0) // judged afresh on its new connection
	m.slow.since.Store(0)
	v.rebuildViewLocked()
}

// rebuildCopyHook, when set (tests), runs before each layer copy.
var rebuildCopyHook func()

// errPullUnavailable: the target cannot pull from the source (it cannot
// reach the address the engine uses, or predates PullLayer); the engine
// relays the data instead.
var errPullUnavailable = errors.New("target cannot pull from the source")

// pullWindow is the range of one PullLayer request; progress advances per
// window.
const pullWindow = 256 << 20

// copyLayer copies one layer's allocated extents from src to the target:
// the target pulls them straight from the source when it can (the data
// then crosses the network once and skips the engine), else the engine
// relays them. relayed reports which.
func (v *Volume) copyLayer(ctx context.Context, src, m *member, layer string) (n int64, relayed bool, err error) {
	lctx, cancel := context.WithTimeout(ctx, v.cfg.ControlTimeout)
	extents, err := src.r.LayerExtents(lctx, layer)
	cancel()
	if err != nil {
		return 0, false, fmt.Errorf("source %s extents: %w", src.addr, err)
	}
	var total int64
	for _, e := range extents {
		total += e.Length
	}
	m.toCopy.Add(total)
	n, err = v.pullLayer(ctx, m.r, src, m, layer)
	if !errors.Is(err, errPullUnavailable) {
		return n, false, err
	}
	v.log.Info("Rebuild target cannot pull from the source; relaying", "replica", m.addr, "source", src.addr, "err", err.Error())
	n, err = v.relayLayer(ctx, src, m, layer, extents)
	return n, true, err
}

// pullLayer has the target pull layer from src window by window. It fails
// with errPullUnavailable, having copied nothing, when the target cannot
// pull at all.
func (v *Volume) pullLayer(ctx context.Context, p *Replica, src, m *member, layer string) (int64, error) {
	var copied int64
	size := v.Size()
	for w := int64(0); w < size; w += pullWindow {
		// A window moves at most pullWindow bytes: allow it a slow disk's time.
		wctx, cancel := context.WithTimeout(ctx, max(v.cfg.ControlTimeout, 10*time.Minute))
		n, err := p.PullLayer(wctx, layer, src.addr, w, min(pullWindow, size-w))
		cancel()
		copied += n
		m.copied.Add(n)
		v.cfg.Metrics.addRebuilt(v.cfg.Name, m.addr, n)
		if err != nil {
			if copied == 0 && errors.Is(err, errPullUnavailable) {
				return 0, err
			}
			return copied, fmt.Errorf("pull into %s from %s: %w", m.addr, src.addr, err)
		}
	}
	return copied, nil
}

// relayLayer copies one layer's extents from src to the target through the
// engine, in chunks of at most copyChunk, with RebuildWorkers requests in
// flight.
func (v *Volume) relayLayer(ctx context.Context, src, m *member, layer string, extents []replica.Extent) (int64, error) {
	// A job is a span of at most copyChunk bytes read with one ReadLayer;
	// only its extents are written (a hole written as zeroes would hide
	// the layers below).
	type job struct {
		off, n int64
		ext    []replica.Extent
	}
	jobs := make(chan job, 2*v.cfg.RebuildWorkers)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
		copied   atomic.Int64
	)
	setErr := func(err error) {
		errOnce.Do(func() { firstErr = err; stop() })
	}
	for i := 0; i < v.cfg.RebuildWorkers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, copyChunk)
			packed := make([]byte, 0, copyChunk)
			for j := range jobs {
				if ctx.Err() != nil {
					continue
				}
				p := buf[:j.n]
				ictx, cancel := context.WithTimeout(ctx, v.cfg.IOTimeout)
				if err := src.r.ReadLayer(ictx, layer, p, j.off); err != nil {
					cancel()
					if ctx.Err() == nil {
						v.fail(src, fmt.Errorf("rebuild read: %w", err))
					}
					setErr(fmt.Errorf("read %s: %w", src.addr, err))
					continue
				}
				// One vectored write per span: the extents' bytes back to
				// back (a single extent is written from p as is).
				data := p
				if len(j.ext) > 1 || j.ext[0].Offset != j.off || j.ext[0].Length != j.n {
					data = packed[:0]
					for _, e := range j.ext {
						data = append(data, p[e.Offset-j.off:e.Offset-j.off+e.Length]...)
					}
				}
				err := m.r.WriteLayerExtents(ictx, layer, j.ext, data)
				cancel()
				if err != nil {
					setErr(fmt.Errorf("write %s: %w", m.addr, err))
					continue
				}
				var n int64
				for _, e := range j.ext {
					n += e.Length
				}
				m.copied.Add(n)
				copied.Add(n)
				v.cfg.Metrics.addRebuilt(v.cfg.Name, m.addr, n)
			}
		}()
	}
	var cur job
	flush := func() bool {
		if len(cur.ext) == 0 {
			return true
		}
		select {
		case jobs <- cur:
			cur = job{}
			return true
		case <-ctx.Done():
			return false
		}
	}
feed:
	for _, e := range extents {
		for off := e.Offset; off < e.Offset+e.Length; {
			n := min(copyChunk, e.Offset+e.Length-off)
			if len(cur.ext) > 0 && off+n-cur.off > copyChunk {
				if !flush() {
					break feed
				}
			}
			if len(cur.ext) == 0 {
				cur.off = off
			}
			n = min(n, cur.off+copyChunk-off)
			cur.ext = append(cur.ext, replica.Extent{Offset: off, Length: n})
			cur.n = off + n - cur.off
			off += n
		}
	}
	flush()
	close(jobs)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		v.settle()
	}
	return copied.Load(), firstErr
}

const copyChunk = 1 << 20

// promote makes a fully copied target healthy under the barrier.
func (v *Volume) promote(m *member) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.settleLocked()
	if m.mode != ModeRebuilding && m.mode != ModeResyncing {
		return fmt.Errorf("replica %s was dropped during the rebuild: %s", m.addr, m.reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), v.cfg.ControlTimeout)
	defer cancel()
	err := m.r.Flush(ctx)
	if err == nil {
		err = m.r.SetGeneration(ctx, v.gen)
	}
	if err != nil {
		v.markFailedLocked(m, fmt.Errorf("promote: %w", err))
		v.rebuildViewLocked()
		return err
	}
	m.gen, m.mode, m.reason = v.gen, ModeHealthy, ""
	v.rebuildViewLocked()
	v.log.Info("Replica healthy", "replica", m.addr, "generation", v.gen)
	return nil
}

// RunAutoRebuild rebuilds stale and failed members every interval until ctx
// is done (the engine's supervisor loop; replicas that come back after an
// outage are taken back without an operator).
func (v *Volume) RunAutoRebuild(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		v.mu.RLock()
		var cands []string
		now := time.Now()
		for _, m := range v.members {
			if (m.mode == ModeStale || m.mode == ModeFailed) && !m.slowHold(now) {
				cands = append(cands, m.addr)
			}
		}
		healthy := len(v.view.healthy)
		v.mu.RUnlock()
		if healthy == 0 {
			continue
		}
		for _, addr := range cands {
			if _, err := v.Rebuild(ctx, addr); err != nil && !errors.Is(err, ErrBusy) {
				v.log.V(1).Info("Auto rebuild did not succeed", "replica", addr, "err", err.Error())
			}
		}
	}
}

// RemoveReplica drops a replica from the volume (it is closed and
// forgotten; the generation is bumped if it was healthy).
func (v *Volume) RemoveReplica(ctx context.Context, addr string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for i, m := range v.members {
		if m.addr != addr {
			continue
		}
		if m.mode == ModeHealthy && len(v.view.healthy) == 1 {
			return fmt.Errorf("%w: %s is the last healthy replica", ErrBusy, addr)
		}
		wasHealthy := m.mode == ModeHealthy
		v.markFailedLocked(m, errors.New("removed"))
		v.members = append(v.members[:i:i], v.members[i+1:]...)
		v.cfg.Metrics.deleteReplica(v.cfg.Name, addr)
		if wasHealthy {
			return v.bumpGenerationLocked()
		}
		v.rebuildViewLocked()
		return nil
	}
	return fmt.Errorf("%w: replica %s", ErrNotFound, addr)
}
