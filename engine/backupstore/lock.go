package backupstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

// Lock scopes.
const (
	// scopeBlocks guards the block set: backups, restores and verifies hold
	// it shared; block deletion (Delete, GC) holds it exclusive.
	scopeBlocks = "blocks"
	// scopeVolumePrefix + volume guards a volume's catalogue
	// read-modify-write (always exclusive, held for a moment).
	scopeVolumePrefix = "volume/"
)

// lockRecord is the JSON content of a lock object.
type lockRecord struct {
	FormatVersion int       `json:"formatVersion"`
	ID            string    `json:"id"`
	Scope         string    `json:"scope"`
	Exclusive     bool      `json:"exclusive"`
	Purpose       string    `json:"purpose"`
	Holder        string    `json:"holder"`
	Created       time.Time `json:"created"`
	Expires       time.Time `json:"expires"`
}

// LockInfo describes a lock found in the target.
type LockInfo = lockRecord

// lock is a held lock. Its refresher rewrites the object every TTL/3; when
// it cannot do so before the lock expires the operation's context is
// cancelled with ErrLockLost.
type lock struct {
	s      *Store
	rec    lockRecord
	mu     sync.Mutex
	stop   chan struct{}
	done   chan struct{}
	cancel context.CancelCauseFunc
}

// acquire takes a lock: write our lock object, then list the scope's locks;
// if a live conflicting lock exists, remove ours and retry after a random
// backoff until wait runs out. Because every contender writes before it
// looks, two conflicting holders can never both proceed; expired locks of
// crashed holders are ignored (and removed). The returned context is
// cancelled when the lock is lost.
func (s *Store) acquire(ctx context.Context, scope string, exclusive bool, purpose string, wait time.Duration) (*lock, context.Context, error) {
	if s.opts.ReadOnly {
		// A read-only client cannot write locks; it relies on its reads
		// failing cleanly if a block disappears.
		return nil, ctx, nil
	}
	deadline := time.Now().Add(wait)
	backoff := 100 * time.Millisecond
	for {
		now := time.Now().UTC()
		rec := lockRecord{FormatVersion: FormatVersion, ID: newBackupID(now)[1:] + "-" + randomHex(4), Scope: scope,
			Exclusive: exclusive, Purpose: purpose, Holder: s.holder, Created: now, Expires: now.Add(s.opts.LockTTL)}
		if err := s.putLock(ctx, rec); err != nil {
			return nil, ctx, err
		}
		conflicts, err := s.conflictingLocks(ctx, rec)
		if err != nil {
			_ = s.t.Delete(context.WithoutCancel(ctx), lockKey(rec.ID))
			return nil, ctx, err
		}
		if len(conflicts) == 0 {
			lctx, cancel := context.WithCancelCause(ctx)
			l := &lock{s: s, rec: rec, stop: make(chan struct{}), done: make(chan struct{}), cancel: cancel}
			go l.refresh()
			return l, lctx, nil
		}
		_ = s.t.Delete(context.WithoutCancel(ctx), lockKey(rec.ID))
		if time.Now().After(deadline) {
			var who []string
			for _, c := range conflicts {
				who = append(who, fmt.Sprintf("%s (%s, until %s)", c.Holder, c.Purpose, c.Expires.Format(time.RFC3339)))
			}
			return nil, ctx, fmt.Errorf("%w: %s held by %s", ErrLocked, scope, strings.Join(who, ", "))
		}
		sleep := backoff/2 + rand.N(backoff)
		backoff = min(2*backoff, 2*time.Second)
		select {
		case <-ctx.Done():
			return nil, ctx, ctx.Err()
		case <-time.After(sleep):
		}
	}
}

func (s *Store) putLock(ctx context.Context, rec lockRecord) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return s.t.Put(ctx, lockKey(rec.ID), b)
}

// Locks lists the lock objects in the target.
func (s *Store) Locks(ctx context.Context) ([]LockInfo, error) {
	var out []LockInfo
	err := s.t.List(ctx, "locks/", func(o ObjectInfo) error {
		if !strings.HasSuffix(o.Key, ".json") {
			return nil
		}
		b, err := getInto(ctx, s.t, o.Key, nil, maxSmallObject)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrObjectTooLarge) {
			return nil // released meanwhile, or not a lock of ours
		}
		if err != nil {
			return err
		}
		var rec lockRecord
		if json.Unmarshal(b, &rec) != nil || rec.FormatVersion != FormatVersion {
			return nil // not ours to interpret; ignore
		}
		out = append(out, rec)
		return nil
	})
	return out, err
}

func (s *Store) lockExpired(rec lockRecord, now time.Time) bool {
	return now.After(rec.Expires.Add(s.opts.LockClockSkew))
}

func (s *Store) conflictingLocks(ctx context.Context, mine lockRecord) ([]lockRecord, error) {
	all, err := s.Locks(ctx)
	if err != nil {
		return nil, err
	}
	now := s.opts.ExpiryClock()
	var out []lockRecord
	for _, rec := range all {
		if rec.ID == mine.ID || rec.Scope != mine.Scope {
			continue
		}
		if s.lockExpired(rec, now) {
			// A crashed holder: its lock no longer counts; tidy it up.
			_ = s.t.Delete(ctx, lockKey(rec.ID))
			continue
		}
		if rec.Exclusive || mine.Exclusive {
			out = append(out, rec)
		}
	}
	return out, nil
}

func (l *lock) refresh() {
	defer close(l.done)
	ttl := l.s.opts.LockTTL
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		l.mu.Lock()
		rec := l.rec
		l.mu.Unlock()
		if time.Now().After(rec.Expires) {
			l.cancel(fmt.Errorf("%w: %s lock expired before it could be refreshed", ErrLockLost, rec.Scope))
			return
		}
		next := rec
		next.Expires = time.Now().UTC().Add(ttl)
		ctx, cancel := context.WithDeadline(context.Background(), rec.Expires)
		err := l.s.putLock(ctx, next)
		cancel()
		if err == nil {
			l.mu.Lock()
			l.rec = next
			l.mu.Unlock()
		}
	}
}

// valid reports whether the lock is still certainly held (not past its
// expiry by this process's clock, for example after the process was
// stopped for longer than the TTL).
func (l *lock) valid() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	exp := l.rec.Expires
	l.mu.Unlock()
	if time.Now().After(exp) {
		return fmt.Errorf("%w: %s lock expired at %s", ErrLockLost, l.rec.Scope, exp.Format(time.RFC3339))
	}
	return nil
}

// release stops refreshing and removes the lock object.
func (l *lock) release() {
	if l == nil {
		return
	}
	close(l.stop)
	<-l.done
	l.cancel(context.Canceled)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = l.s.t.Delete(ctx, lockKey(l.rec.ID))
}
