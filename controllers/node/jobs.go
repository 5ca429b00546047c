package node

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/cairnstore/cairn/engine/backupstore"
	"github.com/cairnstore/cairn/engine/control"
	"github.com/cairnstore/cairn/internal/secretfile"
)

// job is one long data operation (a restore, a backup) running in the
// agent beside the reconcilers, which poll it.
type job struct {
	// what the job works on (a backup ID, a snapshot name): a reconcile
	// that wants something else stops it and starts another.
	what    string
	cancel  context.CancelFunc
	done    chan struct{}
	percent atomic.Int32
	bytes   atomic.Int64
	err     error // valid once done is closed
	result  any   // what fn left for the reconciler, valid once done is closed
}

// progress records a backupstore progress report.
func (j *job) progress(p backupstore.Progress) {
	if p.BytesTotal > 0 {
		j.percent.Store(int32(p.BytesDone * 100 / p.BytesTotal))
	}
	j.bytes.Store(p.TransferredBytes)
}

// finished reports whether the job ended.
func (j *job) finished() bool {
	select {
	case <-j.done:
		return true
	default:
		return false
	}
}

// jobTable tracks the agent's running jobs by key.
type jobTable struct {
	mu   sync.Mutex
	jobs map[string]*job
}

func (t *jobTable) get(key string) *job {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.jobs[key]
}

// start runs fn in the background under key and calls notify when it
// ends (to reconcile the object that polls it).
func (t *jobTable) start(key, what string, notify func(), fn func(context.Context, *job) error) *job {
	ctx, cancel := context.WithCancel(context.Background())
	j := &job{what: what, cancel: cancel, done: make(chan struct{})}
	t.mu.Lock()
	if t.jobs == nil {
		t.jobs = map[string]*job{}
	}
	t.jobs[key] = j
	t.mu.Unlock()
	go func() {
		defer close(j.done)
		defer notify()
		j.err = fn(ctx, j)
	}()
	return j
}

// stop cancels key's job, waits for it and forgets it.
func (t *jobTable) stop(key string) {
	t.mu.Lock()
	j := t.jobs[key]
	delete(t.jobs, key)
	t.mu.Unlock()
	if j != nil {
		j.cancel()
		<-j.done
	}
}

// stopAll cancels and waits for every job.
func (t *jobTable) stopAll() {
	t.mu.Lock()
	keys := make([]string, 0, len(t.jobs))
	for k := range t.jobs {
		keys = append(keys, k)
	}
	t.mu.Unlock()
	for _, k := range keys {
		t.stop(k)
	}
}

// controlClients caches one engine control client per volume.
type controlClients struct {
	mu sync.Mutex
	m  map[string]*control.Client
}

// get returns vol's client for the control endpoint at addr, reading the
// token from tokenFile the first time.
func (c *controlClients) get(addr, vol, tokenFile string) (*control.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl, ok := c.m[vol]; ok {
		return cl, nil
	}
	tok, err := secretfile.ReadToken(tokenFile)
	if err != nil {
		return nil, err
	}
	if c.m == nil {
		c.m = map[string]*control.Client{}
	}
	cl := control.NewClient(addr, tok)
	c.m[vol] = cl
	return cl, nil
}

func (c *controlClients) forget(vol string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, vol)
}
