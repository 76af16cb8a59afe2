// Package overlay drives the kernel's overlay filesystem: it mounts a stack
// of lower directories (top first), optionally with an upper and a work
// directory, unmounts it, and probes with a real trial mount whether the
// kernel and the caller's privileges allow such a mount at all.
//
// It knows nothing of the layer store: it mounts the directories it is given.
//
// Deep stacks: the classic mount(2) option string is limited to one page, so
// a stack whose "lowerdir=a:b:c" would not fit is mounted through the new
// mount API, one "lowerdir+" per layer (Linux >= 6.8). Where that is missing,
// the layers are reached through short relative symlink names in a temporary
// directory, as docker's overlay2 driver does.
//
// Features: RedirectDir (lower directory renames instead of EXDEV) and Index
// (hardlinks kept across copy-up) are asked for explicitly. Where the kernel
// refuses them (userxattr forbids redirect_dir=on and metacopy=on; index
// needs file handles, which a user namespace does not get) the mount goes
// ahead without them and the Result says which feature was dropped and why.
// Note that index=on ties an upper to its lowers: the kernel records the
// lower root in the upper and refuses a later mount of that upper on a
// different lower stack.
package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// MaxLowers is the kernel's limit on the number of lower layers
// (OVL_MAX_STACK).
const MaxLowers = 500

// Method is how the mount is handed to the kernel.
type Method int

const (
	// MethodAuto picks the first that works of MethodFsconfig,
	// MethodMountData and MethodShortLinks.
	MethodAuto Method = iota
	// MethodFsconfig uses fsopen/fsconfig/fsmount/move_mount with one
	// "lowerdir+" per layer: no length limit (Linux >= 6.8).
	MethodFsconfig
	// MethodMountData uses mount(2) with a "lowerdir=a:b:c,..." string,
	// which must fit in a page.
	MethodMountData
	// MethodShortLinks uses mount(2) with relative names of symlinks in a
	// temporary directory, resolved from a thread whose working directory
	// is that directory; fits 500 layers in a page on any kernel. The
	// mount's options in /proc/self/mountinfo then show those short names
	// ("lowerdir=0:1:2,upperdir=U"), not the layer paths.
	MethodShortLinks
)

func (m Method) String() string {
	switch m {
	case MethodAuto:
		return "auto"
	case MethodFsconfig:
		return "fsconfig"
	case MethodMountData:
		return "mount-data"
	case MethodShortLinks:
		return "short-links"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// Options describes one overlay mount.
type Options struct {
	// Lowers are the lower directories, top first; at least one, at most
	// MaxLowers.
	Lowers []string
	// Upper and Work are the writable layer and the kernel's scratch
	// directory, on the same filesystem. Both empty: a read-only mount of
	// the lowers.
	Upper, Work string
	// UserXattr makes the kernel use user.overlay.* instead of
	// trusted.overlay.* xattrs (-o userxattr); needed inside a user
	// namespace, where trusted.* cannot be written.
	UserXattr bool
	// RedirectDir asks for redirect_dir=on: renaming a lower directory
	// records a redirect xattr instead of failing with EXDEV.
	RedirectDir bool
	// Index asks for index=on: hardlinks of lower files stay one inode
	// after copy-up.
	Index bool
	// Metacopy asks for metacopy=on: chmod/chown copy up metadata only.
	Metacopy bool
	// NFSExport asks for nfs_export=on (needs Index, excludes Metacopy).
	NFSExport bool
	// XinoAuto asks for xino=auto: unique st_ino across layers on
	// different filesystems where the kernel can.
	XinoAuto bool
	// ReadOnly mounts read-only, also when an upper is given.
	ReadOnly bool
	// ExtraOptions are further overlay options, "key=value" or "flag".
	ExtraOptions []string
	// Method forces how the mount is made; MethodAuto normally.
	Method Method
}

// Degradation is a requested feature the mount goes without.
type Degradation struct {
	Feature string // e.g. "redirect_dir=on"
	Reason  string
}

func (d Degradation) String() string { return d.Feature + ": " + d.Reason }

// Result tells how a mount was made.
type Result struct {
	Method Method
	// Options are the options given to the kernel, layer paths left out.
	Options []string
	// Dropped lists requested features the mount goes without, and why:
	// those left out before mounting and those the kernel turned off itself
	// (seen in the mount's options afterwards).
	Dropped []Degradation
	// SuperOptions are the options the kernel reports for the new mount in
	// /proc/self/mountinfo, without the layer paths.
	SuperOptions []string
}

// Sentinel errors, for errors.Is.
var (
	ErrBusy       = errors.New("mount is busy")
	ErrNotMounted = errors.New("not a mount point")
)

// plan is the checked form of Options: what will be handed to the kernel.
type plan struct {
	lowers      []string
	upper, work string
	readOnly    bool
	flags       []string // feature options such as "index=on"
	dropped     []Degradation
}

// makePlan checks opts and decides which features go to the kernel. It drops
// the ones the kernel is known to refuse, so that a mount does not fail for a
// feature that only makes things better.
func makePlan(opts Options) (*plan, error) {
	if len(opts.Lowers) == 0 {
		return nil, errors.New("overlay: no lower directories")
	}
	if len(opts.Lowers) > MaxLowers {
		return nil, fmt.Errorf("overlay: %d lower directories, the kernel allows at most %d", len(opts.Lowers), MaxLowers)
	}
	if (opts.Upper == "") != (opts.Work == "") {
		return nil, errors.New("overlay: upper and work directories go together: give both or neither")
	}
	p := &plan{readOnly: opts.ReadOnly || opts.Upper == ""}
	for _, l := range opts.Lowers {
		a, err := absDir(l)
		if err != nil {
			return nil, fmt.Errorf("overlay: lower %w", err)
		}
		p.lowers = append(p.lowers, a)
	}
	if opts.Upper != "" {
		var err error
		if p.upper, err = absDir(opts.Upper); err != nil {
			return nil, fmt.Errorf("overlay: upper %w", err)
		}
		if p.work, err = absDir(opts.Work); err != nil {
			return nil, fmt.Errorf("overlay: work %w", err)
		}
	}
	drop := func(feature, reason string) {
		p.dropped = append(p.dropped, Degradation{Feature: feature, Reason: reason})
	}
	if opts.UserXattr {
		p.flags = append(p.flags, "userxattr")
	}
	if opts.RedirectDir {
		if opts.UserXattr {
			drop("redirect_dir=on", "the kernel refuses redirect_dir=on with userxattr (an unprivileged user could forge redirects); renaming a lower directory fails with EXDEV")
		} else {
			p.flags = append(p.flags, "redirect_dir=on")
		}
	}
	hasUpper := opts.Upper != ""
	index := opts.Index
	if index && !hasUpper {
		drop("index=on", "no upper directory: nothing is ever copied up")
		index = false
	}
	if index {
		p.flags = append(p.flags, "index=on")
	}
	metacopy := opts.Metacopy
	if metacopy && opts.UserXattr {
		drop("metacopy=on", "the kernel refuses metacopy=on with userxattr")
		metacopy = false
	}
	if opts.NFSExport {
		switch {
		case !index:
			drop("nfs_export=on", "nfs_export needs index=on, which is not in effect")
		case metacopy:
			drop("nfs_export=on", "nfs_export and metacopy=on exclude each other; metacopy wins")
		default:
			p.flags = append(p.flags, "nfs_export=on")
		}
	}
	if metacopy {
		p.flags = append(p.flags, "metacopy=on")
	}
	if opts.XinoAuto {
		p.flags = append(p.flags, "xino=auto")
	}
	for _, o := range opts.ExtraOptions {
		if o == "" || strings.ContainsRune(o, 0) {
			return nil, fmt.Errorf("overlay: bad extra option %q", o)
		}
		p.flags = append(p.flags, o)
	}
	return p, nil
}

func absDir(path string) (string, error) {
	if path == "" {
		return "", errors.New("path is empty")
	}
	a, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	st, err := os.Stat(a)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%s: not a directory", a)
	}
	return a, nil
}

// Mount mounts the overlay described by opts on target.
func Mount(target string, opts Options) (*Result, error) {
	p, err := makePlan(opts)
	if err != nil {
		return nil, err
	}
	// The kernel follows symlinks in the target; resolve it ourselves so
	// the mount can be found in mountinfo afterwards.
	abs, err := filepath.Abs(target)
	if err != nil {
		return nil, fmt.Errorf("overlay mount %s: %w", target, err)
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return nil, fmt.Errorf("overlay mount %s: %w", target, err)
	}
	res := &Result{Dropped: p.dropped, Options: p.flags}

	method := opts.Method
	switch method {
	case MethodFsconfig:
		err = mountFsconfig(abs, p)
	case MethodMountData:
		err = mountData(abs, p)
	case MethodShortLinks:
		err = mountShortLinks(abs, p)
	case MethodAuto:
		method = MethodFsconfig
		err = mountFsconfig(abs, p)
		if errors.Is(err, errFsconfigUnsupported) {
			method = MethodMountData
			err = mountData(abs, p)
			if errors.Is(err, errDataTooLong) {
				method = MethodShortLinks
				err = mountShortLinks(abs, p)
			}
		}
	default:
		return nil, fmt.Errorf("overlay mount %s: unknown method %v", target, method)
	}
	if err != nil {
		return nil, fmt.Errorf("overlay mount %s (%d lowers, %s): %w", abs, len(p.lowers), method, err)
	}
	res.Method = method
	super, err := superOptions(abs)
	if err != nil {
		// Mounted, but we cannot see how: say so without failing.
		res.Dropped = append(res.Dropped, Degradation{Feature: "(all)", Reason: "cannot read the mount's options: " + err.Error()})
		return res, nil
	}
	res.SuperOptions = super
	res.Dropped = append(res.Dropped, kernelDropped(p.flags, super)...)
	return res, nil
}

// kernelDropped compares the features asked for with what the kernel reports
// and explains those it turned off on its own (it only logs a warning).
func kernelDropped(asked, super []string) []Degradation {
	have := map[string]bool{}
	for _, o := range super {
		have[o] = true
	}
	var out []Degradation
	for _, f := range asked {
		var reason string
		switch f {
		case "index=on":
			reason = "the kernel turned index off: it needs file handles on the upper and lower filesystems, which a user namespace (no CAP_DAC_READ_SEARCH) or some filesystems do not give; hardlinks break on copy-up"
		case "nfs_export=on":
			reason = "the kernel turned nfs_export off (it needs index=on and file handles)"
		case "redirect_dir=on":
			reason = "the kernel turned redirect_dir off (the upper cannot hold the xattrs)"
		case "metacopy=on":
			reason = "the kernel turned metacopy off (the upper cannot hold the xattrs)"
		default:
			continue
		}
		if !have[f] {
			out = append(out, Degradation{Feature: f, Reason: reason})
		}
	}
	return out
}

// Unmount unmounts target. A busy mount gives an error wrapping ErrBusy
// unless lazy is set, which detaches it at once and lets the kernel finish
// when the last user is gone. A target that is not a mount point gives an
// error wrapping ErrNotMounted.
func Unmount(target string, lazy bool) error {
	flags := unix.UMOUNT_NOFOLLOW
	if lazy {
		flags |= unix.MNT_DETACH
	}
	err := unix.Unmount(target, flags)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("unmount %s: %w: a process has a file open, a working directory or a mount inside it (unmount lazily to detach it now): %w", target, ErrBusy, err)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		return fmt.Errorf("unmount %s: %w: %w", target, ErrNotMounted, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("unmount %s: not permitted (the mount belongs to another user or mount namespace): %w", target, err)
	}
	return fmt.Errorf("unmount %s: %w", target, err)
}
