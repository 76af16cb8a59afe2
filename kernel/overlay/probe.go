package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/userns"
)

// ProbeOptions says what to try.
type ProbeOptions struct {
	// Dir is a directory on the filesystem that will hold the upper and
	// work directories (and, normally, the layers); the trial runs in a
	// temporary directory made inside it and removed afterwards.
	Dir string
	// Options are the options the real mount will use; Lowers, Upper and
	// Work are replaced by trial directories.
	Options Options
	// LowersOnly probes a mount without upper (a read-only view).
	LowersOnly bool
	// Lowers is how many lower layers to stack (default 2): give the real
	// depth to probe the mount method a deep stack will need.
	Lowers int
}

// Support is the verdict of a probe.
type Support struct {
	OK bool
	// Reason says why not when !OK.
	Reason string
	// Result is how the trial mount was made when it was; its Dropped
	// lists the features the real mount will go without.
	Result *Result
}

// Supported tells whether an overlay mount with opts.Options works here, by
// doing one: it mounts a small stack in a temporary directory under
// opts.Dir and, unless LowersOnly, writes through it the way a container
// does (new file, copy-up, whiteout, opaque directory, and a lower
// directory rename where redirect_dir is in effect). Reading
// /proc/filesystems is not enough: privileges, user namespaces, the upper's
// filesystem and xattr support all decide.
func Supported(opts ProbeOptions) Support {
	if opts.Dir == "" {
		return Support{Reason: "probe: no directory given"}
	}
	root, err := os.MkdirTemp(opts.Dir, ".overlay-probe-")
	if err != nil {
		return Support{Reason: fmt.Sprintf("probe: cannot make a trial directory: %v", err)}
	}
	defer os.RemoveAll(root)
	res, err := probe(root, opts)
	if err != nil {
		return Support{Result: res, Reason: explainProbe(opts, err)}
	}
	return Support{OK: true, Result: res}
}

func probe(root string, opts ProbeOptions) (*Result, error) {
	n := max(opts.Lowers, 2)
	mo := opts.Options
	mo.Lowers = nil
	for i := range n {
		mo.Lowers = append(mo.Lowers, filepath.Join(root, fmt.Sprintf("l%d", i)))
	}
	top, bottom := mo.Lowers[0], mo.Lowers[n-1]
	for _, l := range mo.Lowers {
		if err := os.Mkdir(l, 0o755); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"d", "r"} {
		if err := os.Mkdir(filepath.Join(top, d), 0o755); err != nil {
			return nil, err
		}
	}
	files := map[string]string{filepath.Join(top, "f"): "f", filepath.Join(top, "g"): "g",
		filepath.Join(top, "r", "x"): "x", filepath.Join(bottom, "base"): "base"}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			return nil, err
		}
	}
	mo.Upper, mo.Work = "", ""
	if !opts.LowersOnly {
		mo.Upper, mo.Work = filepath.Join(root, "upper"), filepath.Join(root, "work")
		for _, d := range []string{mo.Upper, mo.Work} {
			if err := os.Mkdir(d, 0o755); err != nil {
				return nil, err
			}
		}
	}
	mnt := filepath.Join(root, "m")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return nil, err
	}
	res, err := Mount(mnt, mo)
	if err != nil {
		return nil, err
	}
	defer func() {
		if Unmount(mnt, false) != nil {
			_ = Unmount(mnt, true)
		}
	}()
	if b, err := os.ReadFile(filepath.Join(mnt, "base")); err != nil || string(b) != "base" {
		return res, fmt.Errorf("mounted, but the bottom layer is not visible (%q, %v)", b, err)
	}
	if opts.LowersOnly || mo.ReadOnly {
		return res, nil
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"create a file", func() error { return os.WriteFile(filepath.Join(mnt, "new"), []byte("n"), 0o644) }},
		{"copy up a lower file", func() error {
			f, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString("+")
			return errors.Join(err, f.Close())
		}},
		{"delete a lower file (whiteout)", func() error { return os.Remove(filepath.Join(mnt, "g")) }},
		{"replace a lower directory (opaque dir)", func() error {
			if err := os.Remove(filepath.Join(mnt, "d")); err != nil {
				return err
			}
			return os.Mkdir(filepath.Join(mnt, "d"), 0o755)
		}},
	}
	if slices.Contains(res.SuperOptions, "redirect_dir=on") {
		steps = append(steps, struct {
			what string
			do   func() error
		}{"rename a lower directory (redirect_dir)", func() error {
			if err := os.Rename(filepath.Join(mnt, "r"), filepath.Join(mnt, "r2")); err != nil {
				return err
			}
			_, err := os.Stat(filepath.Join(mnt, "r2", "x"))
			return err
		}})
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return res, fmt.Errorf("mounted, but cannot %s: %w", s.what, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(mo.Upper, "new")); err != nil {
		return res, fmt.Errorf("mounted, but a new file did not land in the upper: %w", err)
	}
	return res, nil
}

// explainProbe turns a failed trial into a reason a user can act on.
func explainProbe(opts ProbeOptions, err error) string {
	var hints []string
	if !opts.LowersOnly {
		var st unix.Statfs_t
		if unix.Statfs(opts.Dir, &st) == nil {
			switch uint32(st.Type) {
			case unix.OVERLAYFS_SUPER_MAGIC:
				hints = append(hints, opts.Dir+" is on overlayfs, which the kernel refuses (or cannot fully use) as an upper layer")
			case unix.FUSE_SUPER_MAGIC:
				hints = append(hints, opts.Dir+" is on a FUSE filesystem, which the kernel refuses (or cannot fully use) as an upper layer")
			}
		}
	}
	if InUserNamespace() && !opts.Options.UserXattr {
		hints = append(hints, "inside a user namespace trusted.overlay.* xattrs cannot be written: mount with userxattr")
	}
	if errors.Is(err, unix.EPERM) && !InUserNamespace() && os.Geteuid() != 0 {
		hints = append(hints, "not root: run inside a user and mount namespace (unshare -Urm) or use the FUSE union")
	}
	reason := "kernel overlay: " + err.Error()
	if len(hints) > 0 {
		reason += " (" + strings.Join(hints, "; ") + ")"
	}
	return reason
}

// InUserNamespace reports whether this process runs in a user namespace
// other than the initial one.
func InUserNamespace() bool {
	initial, ok := userns.Initial()
	return ok && !initial
}
