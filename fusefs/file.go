package fusefs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fileHandle is an open file of the view: a descriptor of the upper copy,
// or of the lower object for read-only opens that never copied up.
type fileHandle struct {
	mu       sync.Mutex
	fd       int
	upper    bool
	writable bool
	n        *node
	// pt: the kernel was given fd's file as the node's backing file
	// (FUSE passthrough, backingID), so it reads and writes it itself.
	pt        bool
	backingID int32
	// openFlags are the FOPEN_* flags the open is answered with.
	openFlags uint32
}

// newHandle wraps fd, open with open(2) flags oflags, and chooses the I/O
// path: passthrough for upper files where allowed, page-cache reads kept
// across opens for lower files.
//
// Passthrough: the kernel keeps one backing file per inode and opens it
// anew with each caller's flags, so in a writable view a lower backing
// file could serve a write-open after copy-up; lower files qualify only
// in a read-only view. All opens of a node must also agree on passthrough
// or the kernel answers EIO (node.openCached/openPT). Where the kernel
// refuses a backing file (no CAP_SYS_ADMIN in the initial user namespace,
// Linux < 6.9), passthrough is off for the mount from then on.
//
// Every handle is FOPEN_NOFLUSH: a FLUSH would only close a duplicate of
// the backing descriptor, which does nothing on the local file systems
// an upper can live on (overlayfs refuses NFS uppers too) and releases
// none of the open-file-description locks the handles use; without it
// close(2) costs no round trip to the daemon.
func (u *union) newHandle(n *node, fd int, oflags int, upper bool, rel string) *fileHandle {
	h := &fileHandle{fd: fd, upper: upper, n: n, writable: oflags&unix.O_ACCMODE != unix.O_RDONLY}
	h.openFlags = fuse.FOPEN_NOFLUSH
	n.mu.Lock()
	defer n.mu.Unlock()
	x := n.more()
	if upper {
		if x.handles == nil {
			x.handles = map[int]bool{}
		}
		x.handles[fd] = true
	}
	path := "cached"
	if (upper || u.readOnly) && !u.opts.NoPassthrough && !u.noBacking.Load() && x.openCached == 0 {
		if x.backingID == 0 {
			id, errno := u.srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
			if errno != 0 {
				u.noBacking.Store(true)
				u.debugf("passthrough refused by the kernel: reads and writes go through the daemon", "err", errno)
			} else {
				x.backingID = id
			}
		}
		if x.backingID != 0 {
			h.pt, h.backingID = true, x.backingID
			x.openPT++
			path = "passthrough"
		}
	}
	if !h.pt {
		x.openCached++
		if !upper {
			h.openFlags |= fuse.FOPEN_KEEP_CACHE
			path = "lower, cached"
		}
	}
	u.debugf("open", "path", rel, "upper", upper, "io", path)
	return h
}

func (h *fileHandle) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fd < 0 {
		return
	}
	n := h.n
	u := n.u
	n.mu.Lock()
	x := n.more()
	delete(x.handles, h.fd)
	unix.Close(h.fd)
	h.fd = -1
	if h.pt {
		if x.openPT--; x.openPT == 0 && x.backingID != 0 {
			if errno := u.srv.UnregisterBackingFd(x.backingID); errno != 0 {
				u.debugf("passthrough: cannot drop a backing file", "err", errno)
			}
			x.backingID = 0
		}
	} else {
		x.openCached--
	}
	if !n.isDir && !x.hasLowerRel && !x.indexed && x.nlinkGen == 0 && x.openPT == 0 && x.openCached == 0 && len(x.handles) == 0 && len(x.links) == 0 {
		n.x = nil // it held only the open state (reading every file must not grow every node)
	}
	n.mu.Unlock()
}

// spliceMin is the smallest read worth splicing: below it one pread and
// one writev of the reply beat splicing through a pipe (a write of the
// header into the pipe and two splices).
const spliceMin = 64 << 10

func (h *fileHandle) read(buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if len(buf) < spliceMin {
		n, err := unix.Pread(h.fd, buf, off)
		if err != nil {
			return nil, toErrno(err)
		}
		return readBytes(buf[:n]), 0
	}
	return fuse.ReadResultFd(uintptr(h.fd), off, len(buf)), 0
}

// readBytes is data read into the request's buffer. Unlike
// fuse.ReadResultData it offers the data as slices, which go-fuse writes
// to the kernel with the reply's header in one writev; otherwise it first
// tries to splice it through a pipe (a pipe from its pool, the header
// written into it), which only data in a file can take.
type readBytes []byte

func (r readBytes) Size() int                              { return len(r) }
func (r readBytes) Done()                                  {}
func (r readBytes) Bytes(buf []byte) ([]byte, fuse.Status) { return r, fuse.OK }
func (r readBytes) Slices() ([][]byte, fuse.Status)        { return [][]byte{r}, fuse.OK }

func (h *fileHandle) write(data []byte, off int64) (uint32, syscall.Errno) {
	n, err := unix.Pwrite(h.fd, data, off)
	return uint32(max(n, 0)), toErrno(err)
}

func (h *fileHandle) flush() syscall.Errno {
	// Closing a duplicate flushes what close(2) would (e.g. NFS) and
	// releases POSIX locks of the descriptor.
	nfd, err := unix.Dup(h.fd)
	if err != nil {
		return toErrno(err)
	}
	return toErrno(unix.Close(nfd))
}

func (h *fileHandle) fsync(flags uint32) syscall.Errno {
	if h.n.u.opts.Volatile {
		return 0
	}
	if flags&1 != 0 {
		return toErrno(unix.Fdatasync(h.fd))
	}
	return toErrno(unix.Fsync(h.fd))
}

// Locks use open file description locks on the backing descriptor, as
// go-fuse's loopback does; flock(2) maps onto flock.
func (h *fileHandle) getlk(lk *fuse.FileLock, out *fuse.FileLock) syscall.Errno {
	flk := syscall.Flock_t{}
	lk.ToFlockT(&flk)
	errno := toErrno(syscall.FcntlFlock(uintptr(h.fd), unix.F_OFD_GETLK, &flk))
	out.FromFlockT(&flk)
	return errno
}

func (h *fileHandle) setLock(lk *fuse.FileLock, flags uint32, blocking bool) syscall.Errno {
	if flags&fuse.FUSE_LK_FLOCK != 0 {
		var op int
		switch lk.Typ {
		case syscall.F_RDLCK:
			op = syscall.LOCK_SH
		case syscall.F_WRLCK:
			op = syscall.LOCK_EX
		case syscall.F_UNLCK:
			op = syscall.LOCK_UN
		default:
			return syscall.EINVAL
		}
		if !blocking {
			op |= syscall.LOCK_NB
		}
		return toErrno(syscall.Flock(h.fd, op))
	}
	flk := syscall.Flock_t{}
	lk.ToFlockT(&flk)
	op := unix.F_OFD_SETLK
	if blocking {
		op = unix.F_OFD_SETLKW
	}
	return toErrno(syscall.FcntlFlock(uintptr(h.fd), op, &flk))
}
