package replica

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/internal/durable"
)

// Failure points for tests. testHook (replica.go) makes named operations
// fail; crashSim records what a power loss could take away.

// crashSim, when set by a test, records the pre-image of every layer-file
// block a write or hole punch touches until that file is next fdatasynced
// (sync). Drop then puts back the pre-image of a random subset of the
// recorded blocks: the page cache lost after a power cut, where each
// unsynced block independently may or may not have reached the disk. nil
// in production (one pointer test per write).
var crashSim *unsyncedLog

type unsyncedLog struct {
	mu    sync.Mutex
	files map[string]map[int64]preimage // path -> block -> content at last sync
	// created are files whose directory entry is not durable yet (no
	// directory fsync since they were created): a power cut may lose them.
	created map[string]bool
}

type preimage struct {
	hole bool
	data []byte
}

func newUnsyncedLog() *unsyncedLog {
	return &unsyncedLog{files: map[string]map[int64]preimage{}, created: map[string]bool{}}
}

// simCreated records a new file whose directory entry is not yet durable.
func simCreated(path string) {
	if s := crashSim; s != nil {
		s.mu.Lock()
		s.created[path] = true
		s.mu.Unlock()
	}
}

// simDirSynced records a directory fsync: the entries of the files created
// in dir so far are durable.
func simDirSynced(dir string) {
	if s := crashSim; s != nil {
		s.mu.Lock()
		for p := range s.created {
			if filepath.Dir(p) == filepath.Clean(dir) {
				delete(s.created, p)
			}
		}
		s.mu.Unlock()
	}
}

// syncDir fsyncs a replica directory (durable.SyncDir) and tells crashSim.
func syncDir(dir string) error {
	if err := durable.SyncDir(dir); err != nil {
		return err
	}
	simDirSynced(dir)
	return nil
}

// simWrite records the pre-images of the blocks of [off, off+n) of the
// layer file path (open as fd) before they change.
func simWrite(path string, fd int, off, n int64) {
	s := crashSim
	if s == nil || n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	blocks := s.files[path]
	if blocks == nil {
		blocks = map[int64]preimage{}
		s.files[path] = blocks
	}
	for b := off / BlockSize; b < (off+n+BlockSize-1)/BlockSize; b++ {
		if _, ok := blocks[b]; ok {
			continue // the content at the last sync is recorded already
		}
		ext, err := dataExtents(fd, b*BlockSize, (b+1)*BlockSize)
		if err != nil {
			panic(err)
		}
		pi := preimage{hole: len(ext) == 0}
		if !pi.hole {
			pi.data = make([]byte, BlockSize)
			if err := preadFull(fd, pi.data, b*BlockSize); err != nil {
				panic(err)
			}
		}
		blocks[b] = pi
	}
}

// simSynced forgets the pre-images of a file that was just fdatasynced.
func simSynced(path string) {
	if s := crashSim; s != nil {
		s.mu.Lock()
		delete(s.files, path)
		s.mu.Unlock()
	}
}

// drop restores the pre-image of each recorded block with probability p
// and forgets everything. The replica must not be open.
func (s *unsyncedLog) drop(rng *rand.Rand, p float64) (dropped int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for path, blocks := range s.files {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			continue // deleted meanwhile
		}
		for b, pi := range blocks {
			if rng.Float64() >= p {
				continue
			}
			dropped++
			if pi.hole {
				err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, b*BlockSize, BlockSize)
			} else {
				_, err = f.WriteAt(pi.data, b*BlockSize)
			}
			if err != nil {
				panic(err)
			}
		}
		f.Close()
	}
	s.files = map[string]map[int64]preimage{}
	// a file whose directory entry never became durable may vanish
	for path := range s.created {
		if rng.Float64() < p {
			if os.Remove(path) == nil {
				dropped++
			}
		}
	}
	s.created = map[string]bool{}
	return dropped
}

// fdatasync syncs a layer file and tells crashSim its data is safe.
func fdatasync(l *layer) error {
	if err := unix.Fdatasync(l.fd); err != nil {
		return err
	}
	simSynced(l.path)
	return nil
}
