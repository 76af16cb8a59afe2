package apply

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Early writeback (Options.StartWriteback): the data of large files is
// sent to the disk while the rest of the tar is still being applied, so
// that the caller's final sync finds little left to wait for. The
// system calls that start it (sync_file_range, which allocates blocks
// and queues the I/O) run on a goroutine of their own, off the applier's
// path; that goroutine also closes the files it was handed.
const (
	// writebackMin is the size from which a file's data is sent early;
	// smaller files are left to the final sync, one system call each
	// would cost more than it saves.
	writebackMin = 256 << 10
	// writebackStep is how much of a growing file is sent at a time.
	writebackStep = 8 << 20
	// writebackQueue bounds the requests waiting; when it is full,
	// requests are dropped (the final sync writes that data) and files
	// are closed by the applier, which never waits for the disk.
	writebackQueue = 256
)

type writebackReq struct {
	fd     int
	off, n int64 // n == 0: to the end of the file
	close  bool  // close fd afterwards
	name   string
}

// writeback starts the write-out of file ranges and closes files, in the
// order they were asked for.
type writeback struct {
	reqs chan writebackReq
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error // the first close error
}

func newWriteback() *writeback {
	w := &writeback{reqs: make(chan writebackReq, writebackQueue)}
	w.wg.Go(w.run)
	return w
}

func (w *writeback) run() {
	for r := range w.reqs {
		// SYNC_FILE_RANGE_WRITE only queues the I/O. Its errors do not
		// matter: the caller's sync writes and checks everything.
		unix.SyncFileRange(r.fd, r.off, r.n, unix.SYNC_FILE_RANGE_WRITE)
		if r.close {
			if err := unix.Close(r.fd); err != nil {
				w.mu.Lock()
				if w.err == nil {
					w.err = fmt.Errorf("apply %s: close: %w", r.name, err)
				}
				w.mu.Unlock()
			}
		}
	}
}

// start asks for the write-out of n bytes of fd from off, unless the
// queue is full.
func (w *writeback) start(fd int, off, n int64) {
	select {
	case w.reqs <- writebackReq{fd: fd, off: off, n: n}:
	default:
	}
}

// startAndClose asks for the write-out of fd from off to its end, after
// which fd is closed. It answers false, and leaves fd to the caller, when
// the queue is full, unless wait is set: a file of which a range was
// queued must be closed after it, by the writeback goroutine.
func (w *writeback) startAndClose(fd int, off int64, name string, wait bool) bool {
	r := writebackReq{fd: fd, off: off, close: true, name: name}
	if wait {
		w.reqs <- r
		return true
	}
	select {
	case w.reqs <- r:
		return true
	default:
		return false
	}
}

// stop waits for every request and returns the first close error.
func (w *writeback) stop() error {
	close(w.reqs)
	w.wg.Wait()
	return w.err
}
