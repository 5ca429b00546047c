package backupstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// DefaultStallTimeout is TargetOptions.StallTimeout's default.
const DefaultStallTimeout = 60 * time.Second

// stallWatch cancels a request when it makes no progress for d: every
// Read of its body (received or sent) that moves bytes pushes the
// deadline back.
type stallWatch struct {
	d      time.Duration
	timer  *time.Timer
	cancel context.CancelCauseFunc
}

// watchStalls returns a context for one request that is cancelled with
// ErrStalled after d without progress, and the watch that tracks it.
// stop releases both.
func watchStalls(ctx context.Context, d time.Duration) (context.Context, *stallWatch, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &stallWatch{d: d, cancel: cancel}
	w.timer = time.AfterFunc(d, func() {
		cancel(fmt.Errorf("%w: no data for %s", ErrStalled, d))
	})
	return ctx, w, func() { w.timer.Stop(); cancel(nil) }
}

// progress pushes the deadline back.
func (w *stallWatch) progress() { w.timer.Reset(w.d) }

// reader wraps a response body so each read that returns bytes counts as
// progress.
func (w *stallWatch) reader(r io.Reader) io.Reader { return &stallReader{r: r, w: w} }

type stallReader struct {
	r io.Reader
	w *stallWatch
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.w.progress()
	}
	return n, err
}

// readSeeker wraps a request body: the transport reading it to send
// counts as progress; Seek is passed through for signing and retries.
func (w *stallWatch) readSeeker(r io.ReadSeeker) io.ReadSeeker { return &stallReadSeeker{r: r, w: w} }

type stallReadSeeker struct {
	r io.ReadSeeker
	w *stallWatch
}

func (s *stallReadSeeker) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.w.progress()
	}
	return n, err
}

func (s *stallReadSeeker) Seek(off int64, whence int) (int64, error) { return s.r.Seek(off, whence) }

// stallCause returns the ErrStalled cause of ctx, or err unchanged.
func stallCause(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && errors.Is(cause, ErrStalled) {
		return cause
	}
	return err
}
