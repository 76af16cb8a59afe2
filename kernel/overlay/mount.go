package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/mountinfo"
)

var (
	// errFsconfigUnsupported: this kernel lacks the new mount API, overlay's
	// "lowerdir+", or (for long paths) layers passed by fd; another method
	// may still work.
	errFsconfigUnsupported = errors.New("the new mount API with lowerdir+ is not available")
	// errDataTooLong: the mount(2) option string would not fit in a page.
	errDataTooLong = errors.New("the option string does not fit in a page")
)

// fsconfigStringMax is the longest value FSCONFIG_SET_STRING takes (the
// kernel copies at most 256 bytes including the NUL); longer layer paths go
// by file descriptor.
const fsconfigStringMax = 255

// mountFsconfig mounts through fsopen/fsconfig/fsmount/move_mount, one
// "lowerdir+" per layer, so the stack has no length limit. The kernel writes
// why it refuses something into the context's log; errors carry it.
func mountFsconfig(target string, p *plan) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("fsopen: %w: %w", errFsconfigUnsupported, err)
		}
		return fmt.Errorf("fsopen overlay: %w", explainErrno(err))
	}
	defer unix.Close(fd)
	fail := func(what string, err error) error {
		if msg := fsLog(fd); msg != "" {
			return fmt.Errorf("%s: %w (kernel: %s)", what, err, msg)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := unix.FsconfigSetString(fd, "source", "overlay"); err != nil {
		return fail("fsconfig source", err)
	}
	for i, l := range p.lowers {
		if err := setLayer(fd, "lowerdir+", l, false); err != nil {
			// An unknown key answers EINVAL: lowerdir+ is Linux >= 6.8,
			// layers by fd >= 6.13.
			if errors.Is(err, unix.EINVAL) && (i == 0 || len(l) > fsconfigStringMax) {
				msg := fsLog(fd)
				return fmt.Errorf("lowerdir+ %s: %w: %w (kernel: %s)", l, errFsconfigUnsupported, err, msg)
			}
			return fail("lowerdir+ "+l, err)
		}
	}
	if p.upper != "" {
		for _, l := range []struct{ key, dir string }{{"upperdir", p.upper}, {"workdir", p.work}} {
			if err := setLayer(fd, l.key, l.dir, true); err != nil {
				if errors.Is(err, unix.EINVAL) && len(escapeOption(l.dir)) > fsconfigStringMax {
					return fmt.Errorf("%s %s: %w: %w (kernel: %s)", l.key, l.dir, errFsconfigUnsupported, err, fsLog(fd))
				}
				return fail(l.key+" "+l.dir, err)
			}
		}
	}
	for _, o := range p.flags {
		key, val, hasVal := strings.Cut(o, "=")
		if hasVal {
			err = unix.FsconfigSetString(fd, key, val)
		} else {
			err = unix.FsconfigSetFlag(fd, key)
		}
		if err != nil {
			return fail("option "+o, err)
		}
	}
	attrs := 0
	if p.readOnly {
		if err := unix.FsconfigSetFlag(fd, "ro"); err != nil {
			return fail("option ro", err)
		}
		attrs |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fail("create superblock", explainErrno(err))
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return fail("fsmount", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", target, err)
	}
	return nil
}

// setLayer passes a directory by name, or by an open descriptor when the
// name is too long for FSCONFIG_SET_STRING. The kernel takes "lowerdir+" as
// is but unescapes "upperdir" and "workdir" as in the mount(2) string.
func setLayer(fd int, key, dir string, escaped bool) error {
	name := dir
	if escaped {
		name = escapeOption(dir)
	}
	if len(name) <= fsconfigStringMax {
		return unix.FsconfigSetString(fd, key, name)
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	return unix.FsconfigSetFd(fd, key, dfd)
}

// fsLog drains the messages the kernel left in a filesystem context
// ("e overlayfs: ...", "w ...", "i ...").
func fsLog(fd int) string {
	var msgs []string
	buf := make([]byte, 4096)
	for range 64 {
		n, err := unix.Read(fd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	return strings.Join(msgs, "; ")
}

// escapeOption escapes a path for the mount(2) option string: the kernel
// splits options at ',' and lower layers at ':' unless a backslash comes
// first, and takes "\\" as a backslash.
func escapeOption(path string) string {
	var b strings.Builder
	for _, r := range path {
		switch r {
		case '\\', ':', ',':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// dataString builds the mount(2) option string.
func dataString(lowers []string, upper, work string, flags []string) string {
	var b strings.Builder
	b.WriteString("lowerdir=")
	for i, l := range lowers {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(escapeOption(l))
	}
	if upper != "" {
		b.WriteString(",upperdir=" + escapeOption(upper) + ",workdir=" + escapeOption(work))
	}
	for _, f := range flags {
		b.WriteString("," + f)
	}
	return b.String()
}

func mountFlags(p *plan) uintptr {
	if p.readOnly {
		return unix.MS_RDONLY
	}
	return 0
}

// mountData mounts with the classic option string, if it fits in a page.
func mountData(target string, p *plan) error {
	data := dataString(p.lowers, p.upper, p.work, p.flags)
	if len(data) >= os.Getpagesize() {
		return fmt.Errorf("%w: %d bytes", errDataTooLong, len(data))
	}
	if err := unix.Mount("overlay", target, "overlay", mountFlags(p), data); err != nil {
		return fmt.Errorf("mount: %w", explainErrno(err))
	}
	return nil
}

// mountShortLinks makes a symlink per layer with a one- to two-character
// name in a temporary directory and mounts with those relative names from a
// thread whose working directory is that directory, so even 500 layers with
// long paths fit in a page. The kernel resolves the links at mount time; the
// directory goes away right after.
func mountShortLinks(target string, p *plan) error {
	dir, err := os.MkdirTemp("", "layerfs-ovl-")
	if err != nil {
		return fmt.Errorf("link dir: %w", err)
	}
	defer os.RemoveAll(dir)
	names := make([]string, len(p.lowers))
	for i, l := range p.lowers {
		names[i] = strconv.FormatInt(int64(i), 36)
		if err := os.Symlink(l, filepath.Join(dir, names[i])); err != nil {
			return fmt.Errorf("link dir: %w", err)
		}
	}
	upper, work := "", ""
	if p.upper != "" {
		// Upper case: the lowers' base-36 names are lower case.
		upper, work = "U", "W"
		if err := os.Symlink(p.upper, filepath.Join(dir, upper)); err != nil {
			return fmt.Errorf("link dir: %w", err)
		}
		if err := os.Symlink(p.work, filepath.Join(dir, work)); err != nil {
			return fmt.Errorf("link dir: %w", err)
		}
	}
	data := dataString(names, upper, work, p.flags)
	if len(data) >= os.Getpagesize() {
		return fmt.Errorf("%w even with short names: %d bytes", errDataTooLong, len(data))
	}
	errc := make(chan error, 1)
	go func() {
		// The working directory is per process; unshare(CLONE_FS) gives
		// this thread its own. The thread is never unlocked, so the
		// runtime ends it with the goroutine instead of reusing it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare CLONE_FS: %w", err)
			return
		}
		if err := unix.Chdir(dir); err != nil {
			errc <- fmt.Errorf("chdir %s: %w", dir, err)
			return
		}
		if err := unix.Mount("overlay", target, "overlay", mountFlags(p), data); err != nil {
			errc <- fmt.Errorf("mount: %w", explainErrno(err))
			return
		}
		errc <- nil
	}()
	return <-errc
}

// explainErrno adds what an errno from mount usually means for overlay.
func explainErrno(err error) error {
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("no privilege to mount (needs CAP_SYS_ADMIN, or a user namespace of its own with Linux >= 5.11): %w", err)
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("this kernel has no overlay filesystem (module not loaded?): %w", err)
	}
	return err
}

// superOptions reads the options the kernel reports for the overlay mounted
// last on target, without the layer paths.
func superOptions(target string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var found []string
	ok := false
	for line := range strings.SplitSeq(string(data), "\n") {
		pre, post, hasSep := strings.Cut(line, " - ")
		if !hasSep {
			continue
		}
		fields := strings.Fields(pre)
		tail := strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 || tail[0] != "overlay" || mountinfo.Unescape(fields[4]) != target {
			continue
		}
		found, ok = nil, true
		for o := range strings.SplitSeq(tail[2], ",") {
			key, _, _ := strings.Cut(o, "=")
			switch strings.TrimSuffix(key, "+") {
			case "lowerdir", "upperdir", "workdir", "datadir":
				continue
			}
			found = append(found, o)
		}
	}
	if !ok {
		return nil, fmt.Errorf("%s: no overlay mount there in /proc/self/mountinfo", target)
	}
	return found, nil
}
