package fusefs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
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
	pt       bool // offered for passthrough
}

// ptHandle is a fileHandle that offers its descriptor for FUSE
// passthrough. Upper files get one, lower files only in a read-only view:
// go-fuse and the kernel keep one backing file per inode and the kernel
// reopens it with each caller's flags, so in a writable view a lower
// backing file could serve a write-open after copy-up. All opens of a
// node must also agree on passthrough or the kernel answers EIO (see
// node.openCached/openPT).
type ptHandle struct{ *fileHandle }

func (h ptHandle) PassthroughFd() (int, bool) { return h.fd, true }

var (
	_ fs.FileReader          = (*fileHandle)(nil)
	_ fs.FileWriter          = (*fileHandle)(nil)
	_ fs.FileFlusher         = (*fileHandle)(nil)
	_ fs.FileFsyncer         = (*fileHandle)(nil)
	_ fs.FileReleaser        = (*fileHandle)(nil)
	_ fs.FileLseeker         = (*fileHandle)(nil)
	_ fs.FileAllocater       = (*fileHandle)(nil)
	_ fs.FileGetlker         = (*fileHandle)(nil)
	_ fs.FileSetlker         = (*fileHandle)(nil)
	_ fs.FileSetlkwer        = (*fileHandle)(nil)
	_ fs.FilePassthroughFder = ptHandle{}
)

// newHandle wraps fd, open with open(2) flags oflags, and chooses the I/O
// path: passthrough for upper files where allowed, page-cache reads kept
// across opens for lower files.
//
// Every handle is FOPEN_NOFLUSH: a FLUSH would only close a duplicate of
// the backing descriptor, which does nothing on the local file systems
// an upper can live on (overlayfs refuses NFS uppers too) and releases
// none of the open-file-description locks the handles use; without it
// close(2) costs no round trip to the daemon.
func (u *union) newHandle(n *node, fd int, oflags int, upper bool, rel string) (fs.FileHandle, uint32) {
	h := &fileHandle{fd: fd, upper: upper, n: n, writable: oflags&unix.O_ACCMODE != unix.O_RDONLY}
	fl := uint32(fuse.FOPEN_NOFLUSH)
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
	switch {
	case (upper || u.readOnly) && !u.opts.NoPassthrough && x.openCached == 0:
		// Lower files qualify only in a read-only view, where no
		// copy-up can ever follow.
		h.pt = true
		x.openPT++
		path = "passthrough (if the kernel accepts the backing fd)"
	case !upper:
		x.openCached++
		fl |= fuse.FOPEN_KEEP_CACHE
		path = "lower, cached"
	default:
		x.openCached++
	}
	u.debugf("open", "path", rel, "upper", upper, "io", path)
	if h.pt {
		return ptHandle{h}, fl
	}
	return h, fl
}

func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fd < 0 {
		return syscall.EBADF
	}
	h.n.mu.Lock()
	x := h.n.more()
	delete(x.handles, h.fd)
	err := unix.Close(h.fd)
	h.fd = -1
	if h.pt {
		x.openPT--
	} else {
		x.openCached--
	}
	if !h.n.isDir && !x.hasLowerRel && !x.indexed && x.nlinkGen == 0 && x.openPT == 0 && x.openCached == 0 && len(x.handles) == 0 {
		h.n.x = nil // it held only the open state (reading every file must not grow every node)
	}
	h.n.mu.Unlock()
	return fs.ToErrno(err)
}

// spliceMin is the smallest read worth splicing: below it one pread and
// go-fuse's writev beat splicing through a pipe (two splices, and
// go-fuse's FIONREAD and drain of the pipe afterwards).
const spliceMin = 64 << 10

func (h *fileHandle) Read(ctx context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if len(buf) < spliceMin {
		n, err := unix.Pread(h.fd, buf, off)
		if err != nil {
			return nil, fs.ToErrno(err)
		}
		return fuse.ReadResultData(buf[:n]), 0
	}
	return fuse.ReadResultFd(uintptr(h.fd), off, len(buf)), 0
}

func (h *fileHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := unix.Pwrite(h.fd, data, off)
	return uint32(max(n, 0)), fs.ToErrno(err)
}

func (h *fileHandle) Flush(ctx context.Context) syscall.Errno {
	// Closing a duplicate flushes what close(2) would (e.g. NFS) and
	// releases POSIX locks of the descriptor.
	nfd, err := unix.Dup(h.fd)
	if err != nil {
		return fs.ToErrno(err)
	}
	return fs.ToErrno(unix.Close(nfd))
}

func (h *fileHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if h.n.u.opts.Volatile {
		return 0
	}
	if flags&1 != 0 {
		return fs.ToErrno(unix.Fdatasync(h.fd))
	}
	return fs.ToErrno(unix.Fsync(h.fd))
}

func (h *fileHandle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	n, err := unix.Seek(h.fd, int64(off), int(whence))
	return uint64(n), fs.ToErrno(err)
}

func (h *fileHandle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	return fs.ToErrno(unix.Fallocate(h.fd, mode, int64(off), int64(size)))
}

// Locks use open file description locks on the backing descriptor, as
// go-fuse's loopback does; flock(2) maps onto flock.
func (h *fileHandle) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	flk := syscall.Flock_t{}
	lk.ToFlockT(&flk)
	errno := fs.ToErrno(syscall.FcntlFlock(uintptr(h.fd), unix.F_OFD_GETLK, &flk))
	out.FromFlockT(&flk)
	return errno
}

func (h *fileHandle) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return h.setLock(lk, flags, false)
}

func (h *fileHandle) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return h.setLock(lk, flags, true)
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
		return fs.ToErrno(syscall.Flock(h.fd, op))
	}
	flk := syscall.Flock_t{}
	lk.ToFlockT(&flk)
	op := unix.F_OFD_SETLK
	if blocking {
		op = unix.F_OFD_SETLKW
	}
	return fs.ToErrno(syscall.FcntlFlock(uintptr(h.fd), op, &flk))
}

// asHandle unwraps the union's file handles.
func asHandle(fh fs.FileHandle) *fileHandle {
	switch h := fh.(type) {
	case *fileHandle:
		return h
	case ptHandle:
		return h.fileHandle
	}
	return nil
}
