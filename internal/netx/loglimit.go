package netx

import (
	"sync"
	"time"
)

// LogLimiter passes at most one log line per interval to a log function
// and counts the lines it dropped in between: connection events that a
// misbehaving peer can repeat at will must not flood the log.
type LogLimiter struct {
	every time.Duration
	log   func(msg string, keysAndValues ...any)

	mu      sync.Mutex
	next    time.Time
	dropped int
}

// NewLogLimiter returns a limiter that logs through log (nil discards).
func NewLogLimiter(every time.Duration, log func(msg string, keysAndValues ...any)) *LogLimiter {
	return &LogLimiter{every: every, log: log}
}

// Log logs msg unless a line was logged less than an interval ago; the
// line carries "suppressed", the number of lines dropped before it.
func (l *LogLimiter) Log(msg string, keysAndValues ...any) {
	if l == nil || l.log == nil {
		return
	}
	now := time.Now()
	l.mu.Lock()
	if now.Before(l.next) {
		l.dropped++
		l.mu.Unlock()
		return
	}
	l.next = now.Add(l.every)
	dropped := l.dropped
	l.dropped = 0
	l.mu.Unlock()
	if dropped > 0 {
		keysAndValues = append(keysAndValues, "suppressed", dropped)
	}
	l.log(msg, keysAndValues...)
}
