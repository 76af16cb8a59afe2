package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/mountinfo"
	"github.com/layerfs/layerfs/kernel/overlay"
)

// unionKind is one of the implementations the union section compares.
type unionKind int

const (
	kindUnion  unionKind = iota // layerfs-overlay (fusefs)
	kindKernel                  // kernel overlayfs
	kindFuseOv                  // fuse-overlayfs
	kindPlain                   // the merged files in one plain directory
)

var unionKinds = []unionKind{kindUnion, kindKernel, kindFuseOv, kindPlain}

func (k unionKind) String() string {
	switch k {
	case kindUnion:
		return "layerfs union"
	case kindKernel:
		return "kernel overlay"
	case kindFuseOv:
		return "fuse-overlayfs"
	case kindPlain:
		return "plain dir"
	}
	return fmt.Sprintf("unionKind(%d)", int(k))
}

// daemonized reports whether a userspace process serves the kind's mounts.
func (k unionKind) daemonized() bool { return k == kindUnion || k == kindFuseOv }

// viewSpec is what a mount shows: lowers (top first), and an upper and a
// work dir, or neither for a read-only view.
type viewSpec struct {
	lowers      []string
	upper, work string
	// noSync mounts without durability: fsync=0 for the FUSE programs
	// (the union then syncs no copy-up either), volatile for the kernel.
	noSync bool
}

func (s viewSpec) equal(o viewSpec) bool {
	return slices.Equal(s.lowers, o.lowers) && s.upper == o.upper && s.work == o.work && s.noSync == o.noSync
}

// liveMount is one mounted view.
type liveMount struct {
	kind unionKind
	dir  string // mount point
	spec viewSpec
	pid  int // the serving daemon, for FUSE kinds
}

// mounter mounts and unmounts the views of the overlay kinds: one mount
// point per kind, remounted whenever a measurement wants another view or
// an empty cache. It remembers every mount it made so that unmountAll,
// deferred by the section, leaves none behind whatever happened.
type mounter struct {
	h          *harness
	overlayBin string // layerfs-overlay (or the layerfs binary, run by that name)
	fuseOvBin  string
	base       string // mount points live under it
	live       map[unionKind]*liveMount
}

func newMounter(h *harness, base string) (*mounter, error) {
	m := &mounter{h: h, overlayBin: h.overlay, base: base, live: map[unionKind]*liveMount{}}
	p, err := exec.LookPath("fuse-overlayfs")
	if err != nil {
		return nil, fmt.Errorf("fuse-overlayfs is needed (scripts/install-test-deps.sh installs it): %w", err)
	}
	m.fuseOvBin = p
	for _, k := range unionKinds {
		if k == kindPlain {
			continue
		}
		if err := os.MkdirAll(m.mountPoint(k), 0o755); err != nil {
			return nil, fmt.Errorf("mount point: %w", err)
		}
	}
	return m, nil
}

func (m *mounter) mountPoint(k unionKind) string {
	return filepath.Join(m.base, []string{"union", "kernel", "fuseov"}[k])
}

// ensure mounts spec for kind unless that very view is mounted already,
// and returns its mount point.
func (m *mounter) ensure(ctx context.Context, k unionKind, spec viewSpec) (string, error) {
	if lm := m.live[k]; lm != nil && lm.spec.equal(spec) {
		return lm.dir, nil
	}
	return m.remount(ctx, k, spec)
}

// remount unmounts kind's view, if any, and mounts spec afresh: a new
// superblock, so a FUSE daemon starts with empty caches of its own.
func (m *mounter) remount(ctx context.Context, k unionKind, spec viewSpec) (string, error) {
	start := time.Now()
	if err := m.unmount(k); err != nil {
		return "", err
	}
	unmounted := time.Since(start)
	defer func() {
		m.h.log.Debug("remount", "kind", k, "unmount", unmounted.Round(time.Millisecond), "total", time.Since(start).Round(time.Millisecond))
	}()
	dir := m.mountPoint(k)
	if mounted(dir) {
		// Never stack a view on one this mounter lost track of.
		return "", fmt.Errorf("mount %s: %s is still a mount point", k, dir)
	}
	lm := &liveMount{kind: k, dir: dir, spec: spec}
	var err error
	switch k {
	case kindKernel:
		ko := overlay.Options{Lowers: spec.lowers, Upper: spec.upper, Work: spec.work}
		if spec.noSync {
			ko.ExtraOptions = []string{"volatile"}
		}
		_, err = overlay.Mount(dir, ko)
	case kindUnion:
		err = m.mountFuse(ctx, lm, m.overlayBin, "layerfs-overlay")
	case kindFuseOv:
		err = m.mountFuse(ctx, lm, m.fuseOvBin, "fuse-overlayfs")
	default:
		return "", fmt.Errorf("mount %s: nothing to mount", k)
	}
	if err != nil {
		// A mount that half happened is still unmounted by unmountAll.
		if mounted(dir) {
			m.live[k] = lm
		}
		return "", fmt.Errorf("mount %s at %s: %w", k, dir, err)
	}
	m.live[k] = lm
	return dir, nil
}

// overlayOptions is the -o argument both FUSE programs take.
func overlayOptions(spec viewSpec) string {
	o := "lowerdir=" + strings.Join(spec.lowers, ":")
	if spec.upper != "" {
		o += ",upperdir=" + spec.upper + ",workdir=" + spec.work
	}
	if spec.noSync {
		o += ",fsync=0"
	}
	return o
}

// mountFuse runs a fuse-overlayfs-style program, which returns once the
// mount is ready and leaves its daemon behind, and finds the daemon.
// argv0 is the name the program is run under (layerfs answers as
// layerfs-overlay by that name).
func (m *mounter) mountFuse(ctx context.Context, lm *liveMount, bin, argv0 string) error {
	args := []string{"-o", overlayOptions(lm.spec), lm.dir}
	// Not cancelled with ctx: both programs fork a daemon and return once
	// it has mounted (or failed), so one killed half way could leave a
	// daemon that mounts after the caller looked, and the mount would be
	// left behind. Let it finish; the caller notices ctx afterwards and
	// unmounts what is recorded.
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(mctx, bin, args...)
	cmd.Args[0] = argv0
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", argv0, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	if !mounted(lm.dir) {
		return fmt.Errorf("%s returned but %s is not a mount point", argv0, lm.dir)
	}
	pid, err := daemonPid(lm.dir)
	if err != nil {
		return fmt.Errorf("%s: %w", argv0, err)
	}
	lm.pid = pid
	return nil
}

// unmount unmounts kind's view and waits for its daemon to exit, so the
// next run shares the machine with no one. A busy mount is retried, then
// detached (lazy unmount), and a daemon that does not exit is killed.
func (m *mounter) unmount(k unionKind) error {
	lm := m.live[k]
	if lm == nil {
		return nil
	}
	delete(m.live, k)
	var err error
	for try := 0; try < 20; try++ {
		if err = unix.Unmount(lm.dir, unix.UMOUNT_NOFOLLOW); err == nil || errors.Is(err, unix.EINVAL) {
			err = nil
			break
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	m.h.log.Debug("unmounted", "kind", k, "pid", lm.pid, "err", err, "still mounted", mounted(lm.dir))
	if err != nil {
		m.h.log.Warn("unmount failed, detaching", "dir", lm.dir, "err", err)
		if lerr := unix.Unmount(lm.dir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); lerr != nil && !errors.Is(lerr, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w (lazy: %w)", lm.dir, err, lerr)
		}
	}
	if lm.pid > 0 && !waitExit(lm.pid, 10*time.Second) {
		m.h.log.Warn("daemon still running after unmount, killing it", "kind", k, "pid", lm.pid)
		syscall.Kill(lm.pid, syscall.SIGKILL)
		waitExit(lm.pid, 5*time.Second)
	}
	return nil
}

// unmountAll unmounts every view still mounted; it is deferred by the
// section and runs on errors and interrupts too. Anything else still
// mounted under the mount points' directory is detached as a last resort.
func (m *mounter) unmountAll() {
	for _, k := range unionKinds {
		if err := m.unmount(k); err != nil {
			m.h.log.Error("unmount failed", "kind", k, "err", err)
		}
	}
	stray, err := mountsUnder(m.base)
	if err != nil {
		m.h.log.Error("cannot list mounts", "err", err)
	}
	for i := len(stray) - 1; i >= 0; i-- {
		m.h.log.Warn("detaching a mount the bench lost track of", "dir", stray[i])
		if err := unix.Unmount(stray[i], unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			m.h.log.Error("leaving a mount behind", "dir", stray[i], "err", err)
		}
	}
}

// daemon returns the pid serving kind's current mount (0 for none).
func (m *mounter) daemon(k unionKind) int {
	if lm := m.live[k]; lm != nil {
		return lm.pid
	}
	return 0
}

// mounted reports whether dir is a mount point: its device differs from
// its parent's (enough here, where the mount points sit on one file system).
func mounted(dir string) bool {
	var st, pst unix.Stat_t
	if unix.Lstat(dir, &st) != nil || unix.Lstat(filepath.Dir(dir), &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev
}

// mountsUnder lists the mount points at or below dir
// (/proc/self/mountinfo), to check nothing is left behind.
func mountsUnder(dir string) ([]string, error) {
	points, err := mountinfo.Points()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, mp := range points {
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, nil
}

// daemonPid finds the process serving the FUSE mount at dir: the one whose
// command line ends with dir (both programs take the mount point last and
// keep their argv when they go to the background).
func daemonPid(dir string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var found []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if args[len(args)-1] == dir {
			found = append(found, pid)
		}
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("no process serves %s", dir)
	case 1:
		return found[0], nil
	}
	return 0, fmt.Errorf("several processes name %s: %v", dir, found)
}

// waitExit waits until pid is gone or a zombie (whoever adopted the
// daemon reaps it when it will), at most d.
func waitExit(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if procState(pid) == 'Z' {
			return true
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procState is the state letter of /proc/PID/stat (0 when unreadable).
func procState(pid int) byte {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2]
	}
	return 0
}

// procCPU is a process's user+sys CPU time so far (/proc/PID/stat), 0 when
// it cannot be read.
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces; the fields after it may not.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(s[i+1:])
	// utime and stime are fields 14 and 15 of stat(5); here 12 and 13.
	if len(fields) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseInt(fields[11], 10, 64)
	st, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	// USER_HZ is 100 on every Linux ABI Go supports.
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// peakRSS is a process's VmHWM in bytes.
func peakRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("peak RSS of %d: %w", pid, err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("peak RSS of %d: %q: %w", pid, l, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("peak RSS of %d: no VmHWM", pid)
}
