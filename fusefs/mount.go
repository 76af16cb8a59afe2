package fusefs

import (
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Server is a mounted union.
type Server struct {
	srv       *fuse.Server
	u         *union
	target    string
	closeOnce sync.Once
}

// Mount mounts the union described by opts on target and returns once the
// kernel serves it.
func Mount(target string, opts Options) (*Server, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", target, err)
	}
	o := opts.withDefaults()
	u, err := newUnion(o)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", target, err)
	}
	if err := u.rootNode(); err != nil {
		u.close()
		return nil, fmt.Errorf("mount %s: %w", target, err)
	}
	u.adoptKernelIndex() // kernelindex.go
	mo := fuse.MountOptions{
		FsName:        o.FsName,
		Name:          "layerfs",
		AllowOther:    o.AllowOther,
		Options:       append(permissionMountOptions(&o), o.ExtraMountOptions...),
		EnableLocks:   true,
		Debug:         o.Debug,
		MaxBackground: 64,
		MaxStackDepth: 1,
		MaxReadAhead:  1 << 20,
		// MaxWrite stays at go-fuse's 128 KiB: every reader holds a
		// read buffer of that size, and the buffers a GC empties
		// sync.Pool of are allocated and zeroed again. At 1 MiB, rm -rf
		// of a lower tree took 30% longer and the daemon 5 MiB more.
		DirectMount: os.Geteuid() == 0,
		// READDIRPLUS for every listing (not READDIRPLUS_AUTO, which
		// asks for attributes in the first chunk only): the union
		// decides per directory whether to answer with them (dir.go).
		EnableSymlinkCaching: true,
		Logger:               slogAdapter(o.Logger),
	}
	if u.readOnly {
		mo.Options = append(mo.Options, "ro")
	}
	u.posixACLMountOptions(&mo) // acl.go
	if mo.DirectMount {
		mo.Options, mo.DirectMountFlags = splitMountFlags(mo.Options)
	}
	srv, err := fuse.NewServer(newRawFS(u), target, &mo)
	if err != nil {
		u.close()
		return nil, fmt.Errorf("mount %s: %w", target, err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		srv.Unmount()
		u.close()
		return nil, fmt.Errorf("mount %s: %w", target, err)
	}
	return &Server{srv: srv, u: u, target: target}, nil
}

func slogAdapter(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelDebug)
}

// Wait blocks until the union is unmounted (by Unmount, umount or
// fusermount3 -u).
func (s *Server) Wait() {
	s.srv.Wait()
	s.closeOnce.Do(s.u.close)
}

// Unmount detaches the union. When the mount is busy it falls back to a
// lazy unmount so no mount is left behind.
func (s *Server) Unmount() error {
	err := s.srv.Unmount()
	if err != nil && os.Geteuid() == 0 {
		if lerr := unix.Unmount(s.target, unix.MNT_DETACH); lerr == nil || errors.Is(lerr, syscall.EINVAL) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", s.target, err)
	}
	// The layer descriptors are closed once no request can use them.
	go func() {
		s.srv.Wait()
		s.closeOnce.Do(s.u.close)
	}()
	return nil
}

// rootNode makes the view's root node and the tree of nodes it starts.
func (u *union) rootNode() error {
	n := &node{u: u, isDir: true, lowerLayer: -1, hasUpper: u.upper != nil, x: &nodeExtra{lowerRel: "."}, mode: typeBits(unix.S_IFDIR)}
	var st unix.Stat_t
	var top *layer
	if u.upper != nil {
		top = u.upper
		m := readDirMarks(u.upper, ".")
		if !m.opaque {
			n.x.lowerDirs = u.rootLowers()
		}
	} else {
		top = u.lowers[0]
		n.x.lowerDirs = u.rootLowers()
	}
	if err := top.lstat(".", &st); err != nil {
		return err
	}
	n.x.lowerDirBytes = u.rootLowerBytes
	u.rootDirs = n.x.lowerDirs
	u.root = n
	n.ino = u.inos.ino(st.Dev, st.Ino)
	if u.upper != nil {
		if o, ok := readOrigin(u.upper.root); ok {
			n.ino = o
		}
	}
	if n.ino == 0 {
		n.ino = fuse.FUSE_ROOT_ID
	}
	u.tree = newTree(n)
	return nil
}

func (u *union) rootLowers() []lowerDir {
	var out []lowerDir
	for i, l := range u.lowers {
		m := readDirMarks(l, ".")
		var st unix.Stat_t
		if l.lstat(".", &st) == nil {
			u.rootLowerBytes += st.Size
		}
		out = append(out, lowerDir{layer: i, xwh: m.xwhiteouts})
		if m.opaque {
			break
		}
	}
	return out
}

// splitMountFlags moves the options mount(2) takes as flags (go-fuse's
// direct mount handles only [no]dev, [no]suid and [no]exec itself) out of
// the option string.
func splitMountFlags(opts []string) ([]string, uintptr) {
	flagOf := map[string]uintptr{
		"noatime": unix.MS_NOATIME, "nodiratime": unix.MS_NODIRATIME,
		"relatime": unix.MS_RELATIME, "strictatime": unix.MS_STRICTATIME,
	}
	var rest []string
	var flags uintptr
	for _, o := range opts {
		if f, ok := flagOf[o]; ok {
			flags |= f
			continue
		}
		if o == "atime" || o == "diratime" || o == "rw" || strings.TrimSpace(o) == "" {
			continue
		}
		rest = append(rest, o)
	}
	return rest, flags
}
