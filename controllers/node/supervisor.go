package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
)

// Backoff bounds for restarting a crashed child. A child that ran for
// stableAfter resets the backoff to its minimum.
const (
	minBackoff  = time.Second
	maxBackoff  = 30 * time.Second
	stableAfter = time.Minute
	stopTimeout = 30 * time.Second
)

// ProcState is a child's observed state.
type ProcState struct {
	// PID of the running process; 0 while none runs.
	PID int
	// Running is true while a process is alive.
	Running bool
	// Restarts counts restarts after a crash.
	Restarts int
	// LastExit describes the last unexpected exit ("" if none).
	LastExit string
	// Since is when the current process started or the last one exited.
	Since time.Time
}

// Child describes a process to supervise.
type Child struct {
	// Args follow the binary (the subcommand first).
	Args []string
	// Mark is an argv sequence ("\x00--flag\x00value\x00") that identifies
	// the child in /proc/PID/cmdline.
	Mark string
	// PreStart, if set, runs before every start (for example to clear what
	// a crashed predecessor left behind); an error counts as a failed start.
	PreStart func() error
}

// proc is one supervised child.
type proc struct {
	key   string
	child Child
	state ProcState
	stop  chan struct{}
	done  chan struct{}
	pid   int
	// adopted is a pidfd of a process an earlier agent started, watched
	// until it exits before the child is run normally (-1 when none).
	adopted int
}

// Supervisor runs child processes of one binary, each under a key, restarts
// them with exponential backoff when they exit, and records their pids in
// RunDir/<key>.pid so a restarted agent can find and stop leftovers. Every
// child runs in its own process group; its output goes to LogDir/<key>.log.
type Supervisor struct {
	Binary string
	RunDir string
	LogDir string
	// Marker is a string every child's command line contains (the data
	// directory), checked before a leftover process is killed.
	Marker string
	Log    logr.Logger
	// Notify is called (without locks held) when a child starts or exits.
	Notify func(key string)

	mu    sync.Mutex
	procs map[string]*proc
}

// Ensure starts the child key unless it is already supervised; a supervised
// child keeps running and uses c from its next restart on.
func (s *Supervisor) Ensure(key string, c Child) ProcState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs == nil {
		s.procs = map[string]*proc{}
	}
	if p, ok := s.procs[key]; ok {
		p.child = c
		return p.state
	}
	p := &proc{key: key, child: c, stop: make(chan struct{}), done: make(chan struct{}), adopted: -1}
	s.procs[key] = p
	p.state.Since = time.Now()
	go s.run(p)
	return p.state
}

// State returns the state of key and whether it is supervised.
func (s *Supervisor) State(key string) (ProcState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.procs[key]
	if !ok {
		return ProcState{}, false
	}
	return p.state, true
}

// Stop stops the child key (SIGTERM to its process group, SIGKILL after
// stopTimeout) and forgets it. Stopping an unknown key is a no-op.
func (s *Supervisor) Stop(ctx context.Context, key string) error {
	s.mu.Lock()
	p, ok := s.procs[key]
	if ok {
		delete(s.procs, key)
	}
	s.mu.Unlock()
	if !ok {
		return nil
	}
	close(p.stop)
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", key, ctx.Err())
	}
}

// StopAll stops every child whose key has prefix, concurrently.
func (s *Supervisor) StopAll(ctx context.Context, prefix string) {
	s.mu.Lock()
	var keys []string
	for k := range s.procs {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Go(func() {
			if err := s.Stop(ctx, k); err != nil {
				s.Log.Error(err, "Stopping child failed", "child", k)
			}
		})
	}
	wg.Wait()
}

// run starts p and restarts it after each exit until p.stop closes.
func (s *Supervisor) run(p *proc) {
	defer close(p.done)
	backoff := minBackoff
	for {
		started := time.Now()
		var err error
		if p.adopted >= 0 {
			err = s.runAdopted(p)
		} else {
			err = s.runOnce(p)
		}
		s.notify(p.key)
		select {
		case <-p.stop:
			return
		default:
		}
		if s.forgetUnclaimed(p) {
			return
		}
		if time.Since(started) >= stableAfter {
			backoff = minBackoff
		}
		s.mu.Lock()
		p.state.LastExit = exitReason(err)
		s.mu.Unlock()
		s.Log.Info("Child exited; restarting after backoff", "child", p.key, "reason", exitReason(err), "backoff", backoff)
		select {
		case <-p.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
		s.mu.Lock()
		p.state.Restarts++
		s.mu.Unlock()
	}
}

// forgetUnclaimed drops an adopted child that exited before any Ensure
// said how to run it: nothing restarts it, and a later Ensure starts anew.
func (s *Supervisor) forgetUnclaimed(p *proc) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(p.child.Args) > 0 {
		return false
	}
	if s.procs[p.key] == p {
		delete(s.procs, p.key)
	}
	return true
}

// runOnce runs one process of p until it exits or p.stop closes.
func (s *Supervisor) runOnce(p *proc) error {
	s.mu.Lock()
	c := p.child
	s.mu.Unlock()
	if c.PreStart != nil {
		if err := c.PreStart(); err != nil {
			return fmt.Errorf("prepare start: %w", err)
		}
	}
	out, err := os.OpenFile(filepath.Join(s.LogDir, p.key+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(s.Binary, c.Args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	pidFile := filepath.Join(s.RunDir, p.key+".pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		s.Log.Error(err, "Writing pid file failed", "child", p.key)
	}
	defer os.Remove(pidFile)
	s.mu.Lock()
	p.state.PID, p.state.Running, p.state.Since = pid, true, time.Now()
	s.mu.Unlock()
	s.Log.Info("Child started", "child", p.key, "pid", pid)
	s.notify(p.key)

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err = <-waited:
	case <-p.stop:
		err = terminate(pid, waited)
		s.Log.Info("Child stopped", "child", p.key, "pid", pid)
	}
	s.mu.Lock()
	p.state.PID, p.state.Running, p.state.Since = 0, false, time.Now()
	s.mu.Unlock()
	return err
}

// terminate sends SIGTERM to the process group of pid and SIGKILL after
// stopTimeout, then waits for the exit reported on waited.
func terminate(pid int, waited <-chan error) error {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case err := <-waited:
		return err
	case <-time.After(stopTimeout):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		return <-waited
	}
}

func (s *Supervisor) notify(key string) {
	if s.Notify != nil {
		s.Notify(key)
	}
}

func exitReason(err error) string {
	if err == nil {
		return "exited with status 0"
	}
	return err.Error()
}

// Adopt takes over the live children an earlier agent recorded in
// RunDir/*.pid (checked as KillLeftovers checks them): each is supervised
// under its key as if this agent had started it, keeps running, and is
// restarted as usual once it exits, with what the next Ensure of its key
// says (one no Ensure claimed by then is forgotten). It returns the
// adopted keys; KillLeftovers leaves them alone.
func (s *Supervisor) Adopt(markOf func(key string) string) []string {
	files, _ := filepath.Glob(filepath.Join(s.RunDir, "*.pid"))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs == nil {
		s.procs = map[string]*proc{}
	}
	var keys []string
	for _, f := range files {
		key := strings.TrimSuffix(filepath.Base(f), ".pid")
		pid, err := readPID(f)
		if err != nil || pid <= 1 || !s.isOurs(pid, markOf(key)) {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		p := &proc{key: key, stop: make(chan struct{}), done: make(chan struct{}), pid: pid, adopted: fd}
		p.state = ProcState{PID: pid, Running: true, Since: time.Now()}
		s.procs[key] = p
		s.Log.Info("Adopted child of an earlier agent", "child", key, "pid", pid)
		go s.run(p)
		keys = append(keys, key)
	}
	return keys
}

func readPID(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// runAdopted watches an adopted process until it exits or p.stop closes
// (then it is terminated with its process group, like a child).
func (s *Supervisor) runAdopted(p *proc) error {
	fd, pid := p.adopted, p.pid
	p.adopted = -1
	defer unix.Close(fd)
	exited := make(chan struct{})
	go func() { waitPidfd(fd); close(exited) }()
	var err error
	select {
	case <-exited:
		err = fmt.Errorf("adopted process %d exited", pid)
	case <-p.stop:
		err = killAndWait(context.Background(), pid)
		s.Log.Info("Child stopped", "child", p.key, "pid", pid)
	}
	_ = os.Remove(filepath.Join(s.RunDir, p.key+".pid"))
	s.mu.Lock()
	p.state.PID, p.state.Running, p.state.Since = 0, false, time.Now()
	s.mu.Unlock()
	return err
}

// waitPidfd blocks until the process of the pidfd exits.
func waitPidfd(fd int) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// KillLeftovers stops processes recorded in RunDir/*.pid by an earlier agent:
// only a live process whose command line still contains Marker and the
// child's identifying mark is signalled (its process group, SIGTERM then
// SIGKILL). marks maps a pid-file key to that mark; keys without a mark are
// checked against Marker alone.
func (s *Supervisor) KillLeftovers(ctx context.Context, markOf func(key string) string) error {
	files, err := filepath.Glob(filepath.Join(s.RunDir, "*.pid"))
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		key := strings.TrimSuffix(filepath.Base(f), ".pid")
		if _, adopted := s.State(key); adopted {
			continue
		}
		pid, err := readPID(f)
		if os.IsNotExist(err) {
			continue
		}
		if err == nil && pid > 1 && s.isOurs(pid, markOf(key)) {
			s.Log.Info("Stopping leftover child of an earlier agent", "child", key, "pid", pid)
			if err := killAndWait(ctx, pid); err != nil {
				errs = append(errs, fmt.Errorf("leftover %s (pid %d): %w", key, pid, err))
				continue
			}
		}
		_ = os.Remove(f)
	}
	return errors.Join(errs...)
}

// isOurs reports whether pid is alive and its command line holds Marker and mark.
func (s *Supervisor) isOurs(pid int, mark string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !alive(pid) {
		return false
	}
	return bytes.Contains(cmdline, []byte(s.Marker)) && bytes.Contains(cmdline, []byte(mark))
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// killAndWait terminates the process group of a process that is not our
// child and polls until it is gone.
func killAndWait(ctx context.Context, pid int) error {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	deadline := time.Now().Add(stopTimeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			deadline = time.Now().Add(stopTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
