// Package doctor finds out what the environment lets layerfs do (user
// namespace, store filesystem, kernel overlayfs, FUSE, subordinate IDs) and
// turns those facts into a short report with a verdict per topic, a hint
// for each problem, and the driver `mount --driver auto` will pick.
//
// Gather does the probing (it touches the system: a trial overlay mount,
// an xattr on a scratch file, opening /dev/fuse); Assess is pure, so the
// verdicts are tested from made-up facts.
package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/kernel/overlay"
)

// Options say what to examine.
type Options struct {
	// Store is the store directory layerfs would use (it need not exist).
	Store string
}

// Facts are what Gather found, without judgement.
type Facts struct {
	EUID     int    `json:"euid"`
	UID      int    `json:"uid"`
	UserName string `json:"user"`
	// UIDMap and GIDMap are this process's /proc/self/{uid,gid}_map.
	UIDMap []IDRange `json:"uidMap"`
	GIDMap []IDRange `json:"gidMap"`
	// InitialNamespace: the identity map of every ID (not in a user namespace).
	InitialNamespace bool `json:"initialNamespace"`
	// HostUID and HostUser are who the euid is in the parent namespace
	// (the same as EUID outside a user namespace): whose /etc/subuid
	// ranges count.
	HostUID  uint32 `json:"hostUID"`
	HostUser string `json:"hostUser"`
	// SysAdmin: CAP_SYS_ADMIN is effective (mount(2) works, in the
	// namespace that owns this mount namespace). BoundingSysAdmin: a
	// setuid-root program (fusermount3) can gain it, unless NoNewPrivs.
	// Containers drop it from both unless asked (--cap-add SYS_ADMIN).
	SysAdmin         bool `json:"capSysAdmin"`
	BoundingSysAdmin bool `json:"boundingSysAdmin"`
	NoNewPrivs       bool `json:"noNewPrivs"`

	Store  StoreFacts  `json:"store"`
	Kernel KernelFacts `json:"kernel"`
	Fuse   FuseFacts   `json:"fuse"`
	SubIDs SubIDFacts  `json:"subids"`
}

// StoreFacts describe the store directory and its filesystem.
type StoreFacts struct {
	Path   string `json:"path"`
	Exists bool   `json:"exists"`
	// Namespace is the store's xattr namespace ("trusted" or "user"): from
	// store.json when the store exists, else what a new one would get.
	Namespace string `json:"namespace"`
	// TestedIn is the directory the checks ran in: the store, or the
	// nearest existing parent where the store would be created.
	TestedIn     string `json:"testedIn"`
	Writable     bool   `json:"writable"`
	WritableErr  string `json:"writableErr,omitempty"`
	UserXattr    bool   `json:"userXattr"`
	UserXattrErr string `json:"userXattrErr,omitempty"`
	// TrustedXattr is only tried where it can work (root in the initial
	// user namespace).
	TrustedXattrTried bool   `json:"trustedXattrTried"`
	TrustedXattr      bool   `json:"trustedXattr"`
	TrustedXattrErr   string `json:"trustedXattrErr,omitempty"`
	Filesystem        string `json:"filesystem"`
}

// KernelFacts describe the kernel and its overlayfs.
type KernelFacts struct {
	Release string `json:"release"`
	// OverlayUserXattr: the trial mount used -o userxattr (as the real
	// mount will in a user namespace or a rootless store).
	OverlayUserXattr bool   `json:"overlayUserxattr"`
	OverlayOK        bool   `json:"overlayOK"`
	OverlayReason    string `json:"overlayReason,omitempty"`
}

// FuseFacts describe what FUSE mounting needs.
type FuseFacts struct {
	DevFuse    bool   `json:"devFuse"`
	DevFuseErr string `json:"devFuseErr,omitempty"`
	// Fusermount is fusermount3's path ("" when not on PATH).
	Fusermount       string `json:"fusermount,omitempty"`
	FusermountSetuid bool   `json:"fusermountSetuid"`
	// AllowOther: user_allow_other in /etc/fuse.conf.
	AllowOther bool   `json:"userAllowOther"`
	FuseConf   string `json:"fuseConfErr,omitempty"`
}

// SubIDFacts describe the subordinate ID ranges and their helpers.
type SubIDFacts struct {
	SubUID    []SubIDRange `json:"subuid"`
	SubGID    []SubIDRange `json:"subgid"`
	NewUIDMap string       `json:"newuidmap,omitempty"`
	NewGIDMap string       `json:"newgidmap,omitempty"`
	// Privileged: the helpers are setuid root or carry file capabilities.
	NewUIDMapPrivileged bool `json:"newuidmapPrivileged"`
	NewGIDMapPrivileged bool `json:"newgidmapPrivileged"`
}

// Gather examines the running system.
func Gather(ctx context.Context, opts Options) Facts {
	var f Facts
	f.EUID, f.UID = os.Geteuid(), os.Getuid()
	f.UserName = strconv.Itoa(f.UID)
	if u, err := user.LookupId(f.UserName); err == nil {
		f.UserName = u.Username
	}
	if b, err := os.ReadFile("/proc/self/uid_map"); err == nil {
		f.UIDMap, _ = ParseIDMap(string(b))
	}
	if b, err := os.ReadFile("/proc/self/gid_map"); err == nil {
		f.GIDMap, _ = ParseIDMap(string(b))
	}
	f.InitialNamespace = IsInitialMap(f.UIDMap)
	f.HostUID = uint32(f.EUID)
	if host, ok := ToHost(f.UIDMap, uint32(f.EUID)); ok {
		f.HostUID = host
	}
	f.HostUser = strconv.FormatUint(uint64(f.HostUID), 10)
	// Inside a user namespace /etc/passwd still names the host's users.
	if u, err := user.LookupId(f.HostUser); err == nil {
		f.HostUser = u.Username
	}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		if ps, err := ParseProcStatus(string(b)); err == nil {
			f.SysAdmin, f.BoundingSysAdmin, f.NoNewPrivs = SysAdmin(ps.CapEff), SysAdmin(ps.CapBnd), ps.NoNewPrivs
		}
	}
	// The store's namespace follows graph.Privileged (euid 0 in the initial
	// namespace), whatever the capabilities.
	f.Store = gatherStore(opts.Store, f.EUID == 0 && f.InitialNamespace)
	f.Kernel = gatherKernel(ctx, f)
	f.Fuse = gatherFuse()
	f.SubIDs = gatherSubIDs(f.HostUser, f.HostUID)
	return f
}

func gatherStore(path string, privileged bool) StoreFacts {
	s := StoreFacts{Path: path, Namespace: "user"}
	if privileged {
		s.Namespace = "trusted"
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		s.Exists = true
		var cfg struct {
			XattrNamespace string `json:"xattrNamespace"`
		}
		// store.json is the store's own record of its namespace: an
		// existing store keeps the one it was created with.
		if b, err := os.ReadFile(filepath.Join(path, "store.json")); err == nil && json.Unmarshal(b, &cfg) == nil && cfg.XattrNamespace != "" {
			s.Namespace = cfg.XattrNamespace
		}
	}
	dir := path
	if s.Exists {
		if st, err := os.Stat(filepath.Join(path, "tmp")); err == nil && st.IsDir() {
			dir = filepath.Join(path, "tmp")
		}
	} else {
		dir = nearestExisting(path)
	}
	s.TestedIn = dir
	var sfs unix.Statfs_t
	if unix.Statfs(dir, &sfs) == nil {
		s.Filesystem = fsName(int64(sfs.Type))
	}
	f, err := os.CreateTemp(dir, ".layerfs-doctor-")
	if err != nil {
		s.WritableErr = err.Error()
		return s
	}
	name := f.Name()
	f.Close()
	defer os.Remove(name)
	s.Writable = true
	if err := unix.Setxattr(name, "user.layerfs.doctor", []byte("1"), 0); err != nil {
		s.UserXattrErr = err.Error()
	} else {
		s.UserXattr = true
	}
	if privileged {
		s.TrustedXattrTried = true
		if err := unix.Setxattr(name, "trusted.layerfs.doctor", []byte("1"), 0); err != nil {
			s.TrustedXattrErr = err.Error()
		} else {
			s.TrustedXattr = true
		}
	}
	return s
}

// nearestExisting is the closest existing directory on the way up from
// path: where the store would be created.
func nearestExisting(path string) string {
	p := filepath.Clean(path)
	for {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			return p
		}
		parent := filepath.Dir(p)
		if parent == p {
			return p
		}
		p = parent
	}
}

func fsName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	}
	return fmt.Sprintf("0x%x", magic)
}

func gatherKernel(ctx context.Context, f Facts) KernelFacts {
	var k KernelFacts
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		k.Release = unix.ByteSliceToString(u.Release[:])
	}
	// The same choice the mount command makes (kernelViewOptions).
	k.OverlayUserXattr = !f.InitialNamespace || f.Store.Namespace == "user"
	if !f.Store.Writable {
		k.OverlayReason = "no writable directory to try a mount in: " + f.Store.WritableErr
		return k
	}
	if ctx.Err() != nil {
		k.OverlayReason = ctx.Err().Error()
		return k
	}
	sup := overlay.Supported(overlay.ProbeOptions{Dir: f.Store.TestedIn, Options: overlay.Options{
		UserXattr:   k.OverlayUserXattr,
		RedirectDir: !k.OverlayUserXattr,
	}})
	k.OverlayOK, k.OverlayReason = sup.OK, sup.Reason
	return k
}

func gatherFuse() FuseFacts {
	var fu FuseFacts
	if fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		fu.DevFuseErr = err.Error()
	} else {
		unix.Close(fd)
		fu.DevFuse = true
	}
	if p, err := exec.LookPath("fusermount3"); err == nil {
		fu.Fusermount = p
		fu.FusermountSetuid = setuidRoot(p)
	}
	b, err := os.ReadFile("/etc/fuse.conf")
	switch {
	case err == nil:
		fu.AllowOther = FuseConfAllowsOther(string(b))
	case !errors.Is(err, fs.ErrNotExist):
		fu.FuseConf = err.Error()
	}
	return fu
}

// setuidRoot reports whether the file is owned by root with the setuid bit.
func setuidRoot(path string) bool {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return false
	}
	return st.Mode&unix.S_ISUID != 0 && st.Uid == 0
}

// privilegedHelper: setuid root, or file capabilities (Fedora ships
// newuidmap with cap_setuid instead of the setuid bit).
func privilegedHelper(path string) bool {
	if setuidRoot(path) {
		return true
	}
	sz, err := unix.Getxattr(path, "security.capability", nil)
	return err == nil && sz > 0
}

func gatherSubIDs(name string, uid uint32) SubIDFacts {
	var s SubIDFacts
	if b, err := os.ReadFile("/etc/subuid"); err == nil {
		s.SubUID = ParseSubIDs(string(b), name, uid)
	}
	if b, err := os.ReadFile("/etc/subgid"); err == nil {
		s.SubGID = ParseSubIDs(string(b), name, uid)
	}
	if p, err := exec.LookPath("newuidmap"); err == nil {
		s.NewUIDMap, s.NewUIDMapPrivileged = p, privilegedHelper(p)
	}
	if p, err := exec.LookPath("newgidmap"); err == nil {
		s.NewGIDMap, s.NewGIDMapPrivileged = p, privilegedHelper(p)
	}
	return s
}
