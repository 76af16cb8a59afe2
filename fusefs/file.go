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
	// switched: fd was a lower file's and now is the upper copy's (see
	// ioFd); locked: fd holds a lock, which a switch would drop.
	switched, locked bool
}

// newHandle wraps fd, open with open(2) flags oflags, and chooses the I/O
// path.
//
// Passthrough (the kernel reads and writes the backing file itself) where
// the kernel (6.9+) and privileges allow it: upper files, and lower files
// opened read-only. The kernel keeps one backing file per inode, opens it
// anew with each caller's flags and cannot be given another while one is
// open, so a node whose inode reads its lower file directly must not
// serve a copy-up: an open that needs the upper copy (a write, or any open
// once something else copied it up) retires the node instead (node.retire)
// and answers ESTALE, on which the kernel looks the path up again, finds
// the object's new node, and opens that. All opens of a node must also
// agree on passthrough or the kernel answers EIO (node.openCached/openPT).
// Where the kernel refuses a backing file (no CAP_SYS_ADMIN in the initial
// user namespace, Linux < 6.9), passthrough is off for the mount from then
// on and reads go through the daemon, lower files with their page cache
// kept across opens.
//
// Every handle is FOPEN_NOFLUSH: a FLUSH would only close a duplicate of
// the backing descriptor, which does nothing on the local file systems
// an upper can live on (overlayfs refuses NFS uppers too) and releases
// none of the open-file-description locks the handles use; without it
// close(2) costs no round trip to the daemon.
func (u *union) newHandle(n *node, fd int, oflags int, upper bool, rel string) (*fileHandle, syscall.Errno) {
	h := &fileHandle{fd: fd, upper: upper, n: n, writable: oflags&unix.O_ACCMODE != unix.O_RDONLY}
	h.openFlags = fuse.FOPEN_NOFLUSH
	n.mu.Lock()
	x := n.more()
	if upper && x.backingLower {
		// The kernel's inode reads the lower file; this open needs
		// the copy.
		n.mu.Unlock()
		unix.Close(fd)
		n.retire()
		u.debugf("open: a read-only open holds the lower file; retired the node so the kernel opens its copy", "path", rel)
		return nil, syscall.ESTALE
	}
	defer n.mu.Unlock()
	if upper {
		if x.handles == nil {
			x.handles = map[int]bool{}
		}
		x.handles[fd] = true
	}
	path := "cached"
	if u.srv != nil && !u.opts.NoPassthrough && !u.noBacking.Load() && x.openCached == 0 && (upper || !h.writable) {
		if x.backingID == 0 {
			id, errno := u.srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
			if errno != 0 {
				u.noBacking.Store(true)
				u.debugf("passthrough refused by the kernel: reads and writes go through the daemon", "err", errno)
			} else {
				x.backingID, x.backingLower = id, !upper
			}
		}
		if x.backingID != 0 {
			h.pt, h.backingID = true, x.backingID
			x.openPT++
			path = "passthrough"
			if !upper {
				path = "passthrough (lower)"
			}
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
	return h, 0
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
			x.backingID, x.backingLower = 0, false
		}
	} else {
		x.openCached--
	}
	if !n.isDir && !x.hasLowerRel && !x.indexed && x.nlinkGen == 0 && x.openPT == 0 && x.openCached == 0 && len(x.handles) == 0 && x.kept == nil {
		n.x = nil // it held only the open state (reading every file must not grow every node)
	}
	n.mu.Unlock()
}

// spliceMin is the smallest read worth splicing: below it one pread and
// one writev of the reply beat splicing through a pipe (a write of the
// header into the pipe and two splices).
const spliceMin = 64 << 10

// ioFd is the descriptor to read through. A read-only descriptor of a
// lower file whose node was copied up since switches to the upper copy,
// as overlayfs's ovl_real_fdget does, so it reads what was written after
// the copy-up (a passthrough one cannot: see node.retire). dup3 makes the
// descriptor number refer to the copy at once, so a read running meanwhile
// reads either; one holding a lock stays, as the switch would drop it.
func (h *fileHandle) ioFd() int {
	if h.upper || h.pt {
		return h.fd
	}
	n := h.n
	n.mu.Lock()
	copied := n.hasUpper || n.indexedLocked()
	n.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if !copied || h.switched || h.locked || h.fd < 0 {
		return h.fd
	}
	l, errno := n.where()
	if errno != 0 || !l.upper {
		return h.fd
	}
	var fd int
	var err error
	if l.fd == unix.AT_FDCWD {
		fd, err = unix.Open(l.rel, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	} else {
		fd, err = unix.Openat(l.fd, l.rel, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return h.fd
	}
	if err := unix.Dup3(fd, h.fd, unix.O_CLOEXEC); err == nil {
		h.switched = true
		n.u.debugf("read: a lower descriptor follows its copy-up", "path", l.rel)
	}
	unix.Close(fd)
	return h.fd
}

func (h *fileHandle) read(buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	fd := h.ioFd()
	if len(buf) < spliceMin {
		n, err := unix.Pread(fd, buf, off)
		if err != nil {
			return nil, toErrno(err)
		}
		return readBytes(buf[:n]), 0
	}
	return fuse.ReadResultFd(uintptr(fd), off, len(buf)), 0
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
		return toErrno(syscall.Flock(h.lockFd(lk.Typ), op))
	}
	flk := syscall.Flock_t{}
	lk.ToFlockT(&flk)
	op := unix.F_OFD_SETLK
	if blocking {
		op = unix.F_OFD_SETLKW
	}
	return toErrno(syscall.FcntlFlock(uintptr(h.lockFd(lk.Typ)), op, &flk))
}

// lockFd is the descriptor to lock through, switched to the upper copy
// first where ioFd would: a lock then stays with the data.
func (h *fileHandle) lockFd(typ uint32) int {
	fd := h.ioFd()
	if typ != syscall.F_UNLCK {
		h.mu.Lock()
		h.locked = true
		h.mu.Unlock()
	}
	return fd
}
