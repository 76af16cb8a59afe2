package fusefs

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/layerfs/layerfs/whiteout"
)

// IDMap maps a range of IDs as the view presents them (ContainerID...) onto
// the IDs stored on disk (HostID...), like fuse-overlayfs's
// uidmapping=CONTAINER:HOST:SIZE.
type IDMap struct {
	ContainerID uint32
	HostID      uint32
	Size        uint32
}

// Options describe one union mount. The zero value of every field other
// than Lowers is a sensible default; the field set is kept small and flat so
// a command-line parser (layerfs-overlay) can fill it directly.
type Options struct {
	// Lowers are the read-only layer directories, top first. At least one
	// is required unless Upper is set.
	Lowers []string
	// Upper receives every change. Work is a scratch directory on the same
	// filesystem as Upper (copy-ups are built there and renamed into
	// Upper; the hardlink index lives there). Both empty: read-only view.
	Upper, Work string
	// ReadOnly answers EROFS to every change even when Upper is set.
	ReadOnly bool

	// LowerOwnerTables name, for each of Lowers (same order; "" or a
	// missing file: none), the layer's special-owners table (package
	// ownertable): the owner, group and mode of its symlinks, FIFOs and
	// sockets, which Linux will not give the user.containers.override_stat
	// xattr that carries them for every other object of a rootless
	// layer. A table is read the first time one of those objects of its
	// layer is looked up.
	LowerOwnerTables []string
	// UpperOwnerTable is the upper's table, on the filesystem of Work:
	// copy-up of such an object carries its record there, a chown (or
	// chmod) the daemon may not do natively records the new owner there,
	// and unlink and rename keep it in step. "" keeps none.
	UpperOwnerTable string
	// AllowOther lets users other than the mounter see the view. It also
	// makes the kernel check every access against the owners and modes
	// the view shows (default_permissions), the mounter's too; without
	// it, a view mounted by anyone but root (of the initial user
	// namespace) is its mounter's alone, and the daemon's own rights on
	// the layers decide what the mounter may do (see permissions.go).
	AllowOther bool

	// UIDMap and GIDMap translate owners between what the view shows and
	// what is stored on disk (rootless presentation). Empty: identity.
	// An on-disk ID outside every range shows as OverflowID (65534).
	UIDMap, GIDMap []IDMap
	// SquashUID and SquashGID, when set, make every object appear owned by
	// that UID/GID (fuse-overlayfs's squash_to_uid/squash_to_gid;
	// squash_to_root sets both to 0). On-disk owners are unchanged.
	SquashUID, SquashGID *uint32

	// XattrNamespace is the namespace the union WRITES its overlay
	// metadata in (opaque dirs, redirects, origins): whiteout.Trusted when
	// running as real root, whiteout.User for rootless, matching what
	// kernel overlayfs (with or without -o userxattr) reads later. Both
	// namespaces are always read.
	XattrNamespace whiteout.Namespace

	// Timeout is the entry and attribute cache timeout for objects that
	// live in Upper (default 1s). LowerTimeout is the one for objects and
	// directories that exist only in lowers, which cannot change except
	// through this mount (default 1h). NegativeTimeout caches "no such
	// name" answers (default: Timeout).
	Timeout, LowerTimeout, NegativeTimeout time.Duration
	// NoPassthrough disables FUSE passthrough of reads and writes on
	// upper files (it is tried by default and only works as root on
	// Linux >= 6.9).
	NoPassthrough bool
	// Volatile makes fsync, fdatasync and fsyncdir return at once without
	// syncing the upper (fuse-overlayfs's fsync=0, overlayfs's volatile):
	// for throwaway views (builds, CI), where a crash may lose or tear
	// recent writes. syncfs never syncs through the view (go-fuse
	// answers FUSE_SYNCFS with ENOSYS, which the kernel takes as
	// nothing to do), volatile or not.
	Volatile bool
	// NoXattrs answers getxattr, listxattr, setxattr and removexattr with
	// ENOTSUP (fuse-overlayfs's noxattrs=1): the view shows no extended
	// attributes at all, so no ACLs and no file capabilities either.
	// Copy-up still copies the lowers' xattrs to the upper.
	NoXattrs bool

	// FsName is the source shown in /proc/mounts (default "layerfs").
	FsName string
	// ExtraMountOptions are generic mount options: "dev", "suid", "exec"
	// and their no- forms, "noatime", "nodiratime", "relatime",
	// "strictatime", "ro", "sync", "dirsync", "lazytime"; others go to the
	// FUSE mount as they are. Like every FUSE mount (and fuse-overlayfs)
	// the view is nodev,nosuid unless "dev"/"suid" are given, which a
	// container root filesystem needs.
	ExtraMountOptions []string

	// Debug logs every FUSE request, every copy-up and which I/O path
	// each open took (passthrough, cached lower, cached upper), at
	// slog.LevelDebug on Logger.
	Debug bool
	// Logger receives the union's log lines (default slog.Default()).
	Logger *slog.Logger

	// kernelPermissions: mounted with default_permissions (set by
	// withDefaults from kernelChecksPermissions).
	kernelPermissions bool
	// plusMax, where not 0, stands for plusMaxNames (dir.go): a knob
	// for tests.
	plusMax int
}

// OverflowID is shown for on-disk owners outside every IDMap range.
const OverflowID = 65534

func (o *Options) readOnlyView() bool { return o.ReadOnly || (o.Upper == "" && o.Work == "") }

func (o *Options) validate() error {
	if (o.Upper == "") != (o.Work == "") {
		return errors.New("upper and work must be given together (or neither, for a read-only view)")
	}
	if len(o.Lowers) == 0 && o.Upper == "" {
		return errors.New("need at least one lower or an upper")
	}
	if len(o.LowerOwnerTables) > len(o.Lowers) {
		return fmt.Errorf("%d lower owner tables for %d lowers", len(o.LowerOwnerTables), len(o.Lowers))
	}
	if o.UpperOwnerTable != "" && o.Upper == "" {
		return errors.New("an upper owner table needs an upper")
	}
	if o.Upper != "" {
		up, wk := filepath.Clean(o.Upper)+"/", filepath.Clean(o.Work)+"/"
		if strings.HasPrefix(up, wk) || strings.HasPrefix(wk, up) {
			return fmt.Errorf("upper %s and work %s must not contain each other", o.Upper, o.Work)
		}
	}
	for _, m := range append(append([]IDMap{}, o.UIDMap...), o.GIDMap...) {
		if m.Size == 0 {
			return fmt.Errorf("id mapping %d:%d:%d has size 0", m.ContainerID, m.HostID, m.Size)
		}
	}
	return nil
}

func (o *Options) withDefaults() Options {
	c := *o
	if c.Timeout == 0 {
		c.Timeout = time.Second
	}
	if c.LowerTimeout == 0 {
		c.LowerTimeout = time.Hour
	}
	if c.NegativeTimeout == 0 {
		c.NegativeTimeout = c.Timeout
	}
	if c.FsName == "" {
		c.FsName = "layerfs"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.kernelPermissions = kernelChecksPermissions(&c)
	return c
}

// idMapper translates IDs between the view and the disk.
type idMapper struct {
	m      []IDMap
	squash *uint32
}

// toView maps an on-disk ID to the one shown.
func (im idMapper) toView(id uint32) uint32 {
	if im.squash != nil {
		return *im.squash
	}
	if len(im.m) == 0 {
		return id
	}
	for _, r := range im.m {
		if id >= r.HostID && id-r.HostID < r.Size {
			return r.ContainerID + (id - r.HostID)
		}
	}
	return OverflowID
}

// toDisk maps an ID seen in the view (a caller's or a chown argument) to the
// one stored. ok is false when no range holds it.
func (im idMapper) toDisk(id uint32) (uint32, bool) {
	if len(im.m) == 0 {
		return id, true
	}
	for _, r := range im.m {
		if id >= r.ContainerID && id-r.ContainerID < r.Size {
			return r.HostID + (id - r.ContainerID), true
		}
	}
	return 0, false
}
