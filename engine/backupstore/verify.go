package backupstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
)

// VerifyOptions select what Verify checks.
type VerifyOptions struct {
	// Volume and Backup narrow the check: both empty means every backup of
	// every volume; Backup empty means every backup of Volume.
	Volume, Backup string
	// ExistenceOnly checks that each block is indexed and its pack exists,
	// without reading it.
	ExistenceOnly bool
	// Sample, between 0 and 1 exclusive, checks a random fraction of the
	// distinct blocks; 0 checks all.
	Sample   float64
	Progress func(Progress)
}

// BlockProblem is one bad block and the backups that reference it.
type BlockProblem struct {
	Block   BlockID  `json:"block"`
	Backups []string `json:"backups"` // volume/backup
	Err     error    `json:"-"`
	Message string   `json:"error"`
}

// VerifyReport is the outcome of Verify.
type VerifyReport struct {
	Backups       int            `json:"backups"`
	Blocks        int            `json:"blocks"`        // distinct non-zero blocks referenced
	BlocksChecked int            `json:"blocksChecked"` // after sampling
	BytesRead     int64          `json:"bytesRead"`     // by range reads of packs
	Problems      []BlockProblem `json:"problems,omitempty"`
}

// Verify checks that every block referenced by the selected backups exists
// and (unless ExistenceOnly) decodes and hashes to its id. It returns the
// report and, when there are problems, an error wrapping ErrMissingBlock or
// ErrCorrupt that names the first bad block and its backups.
func (s *Store) Verify(ctx context.Context, opts VerifyOptions) (VerifyReport, error) {
	var rep VerifyReport
	l, ctx, err := s.acquire(ctx, scopeBlocks, false, "verify", s.opts.LockWait)
	if err != nil {
		return rep, err
	}
	defer l.release()

	var vols []string
	switch {
	case opts.Volume != "":
		vols = []string{opts.Volume}
	case opts.Backup != "":
		return rep, errors.New("backupstore: verify of a backup needs its volume")
	default:
		if vols, err = s.Volumes(ctx); err != nil {
			return rep, err
		}
	}
	users := map[BlockID][]string{}
	var bs int
	for _, v := range vols {
		list, err := s.List(ctx, v)
		if err != nil {
			return rep, err
		}
		found := false
		for _, b := range list {
			if opts.Backup != "" && b.ID != opts.Backup {
				continue
			}
			found = true
			m, err := s.checkedManifest(ctx, b)
			if err != nil {
				return rep, fmt.Errorf("verify %s/%s: %w", v, b.ID, err)
			}
			rep.Backups++
			bs = max(bs, m.BlockSize)
			for _, id := range m.Blocks {
				if id.IsZero() {
					continue
				}
				u := users[id]
				if len(u) == 0 || u[len(u)-1] != v+"/"+b.ID {
					users[id] = append(u, v+"/"+b.ID)
				}
			}
		}
		if opts.Backup != "" && !found {
			return rep, fmt.Errorf("%w: %s/%s", ErrBackupNotFound, v, opts.Backup)
		}
	}
	rep.Blocks = len(users)
	ids := make([]BlockID, 0, len(users))
	for id := range users {
		if opts.Sample > 0 && opts.Sample < 1 && rand.Float64() >= opts.Sample {
			continue
		}
		ids = append(ids, id)
	}
	rep.BlocksChecked = len(ids)
	pr := newProgressReporter("verify", int64(len(ids)), len(ids), opts.Progress)

	var mu sync.Mutex
	report := func(id BlockID, err error) {
		mu.Lock()
		defer mu.Unlock()
		rep.Problems = append(rep.Problems, BlockProblem{Block: id, Backups: users[id], Err: err, Message: err.Error()})
	}
	ix, err := s.loadIndex(ctx)
	if err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	if opts.ExistenceOnly {
		err = s.checkExistence(ctx, ix, ids, func(k int, err error) { report(ids[k], err) })
		pr.add(int64(len(ids)), len(ids), 0)
	} else {
		reads := make([]blockRead, len(ids))
		for k, id := range ids {
			reads[k] = blockRead{id: id, loc: ix.blocks[id]}
		}
		_, rep.BytesRead, err = s.readBlocks(ctx, reads, bs, false, func(k int, _, _ []byte, stored int, err error) error {
			if err != nil {
				if !errors.Is(err, ErrMissingBlock) && !errors.Is(err, ErrCorrupt) {
					return err
				}
				report(ids[k], err)
			}
			pr.add(1, 1, int64(stored))
			return nil
		})
	}
	if err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	pr.finish()
	if len(rep.Problems) > 0 {
		sort.Slice(rep.Problems, func(i, j int) bool {
			return rep.Problems[i].Block.String() < rep.Problems[j].Block.String()
		})
		p := rep.Problems[0]
		return rep, fmt.Errorf("verify: %d bad block(s); first: %w (referenced by %s)", len(rep.Problems), p.Err, strings.Join(p.Backups, ", "))
	}
	return rep, nil
}

// checkExistence reports (to bad) each block that is in no index or whose
// pack is not in the target, with one listing of packs/ rather than a
// request per block.
func (s *Store) checkExistence(ctx context.Context, ix *index, ids []BlockID, bad func(k int, err error)) error {
	present := map[packID]bool{}
	err := s.t.List(ctx, "packs/", func(o ObjectInfo) error {
		if p, ok := parsePackKey(o.Key); ok {
			present[p] = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	for k, id := range ids {
		loc, ok := ix.blocks[id]
		switch {
		case !ok:
			bad(k, fmt.Errorf("%w: block %s (in no index)", ErrMissingBlock, id))
		case !present[loc.pack.id]:
			bad(k, fmt.Errorf("%w: block %s (pack %s is missing)", ErrMissingBlock, id, loc.pack.id))
		}
	}
	return nil
}

// parallel runs fn(0..n-1) on up to conc goroutines, stopping at the first
// error.
func parallel(ctx context.Context, conc, n int, fn func(i int) error) error {
	return parallelWorkers(ctx, conc, n, func() func(context.Context, int) error {
		return func(_ context.Context, i int) error { return fn(i) }
	})
}

// parallelWorkers runs items 0..n-1 on up to conc workers, each made by
// newWorker so it can own buffers (bounded memory), and stops at the first
// error. Workers get a context cancelled by that error.
func parallelWorkers(ctx context.Context, conc, n int, newWorker func() func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for w := 0; w < min(conc, max(1, n)); w++ {
		wg.Add(1)
		do := newWorker()
		go func() {
			defer wg.Done()
			for i := range work {
				if err := do(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel(err) })
				}
			}
		}()
	}
feed:
	for i := 0; i < n; i++ {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return context.Cause(ctx)
}
