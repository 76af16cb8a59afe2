package fusefs

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/whiteout"
)

// The differential test applies the same random operation sequences to a
// kernel overlayfs mount (the oracle: index=on so copy-up keeps hardlink
// groups, redirect_dir=on so lower directories can be renamed, as the
// union always does) and to the union over copies of the same layers, and
// compares every operation's errno and the final trees.

var diffSeeds = []uint64{1, 2, 3, 4, 5, 6, 7, 8}

func TestDifferentialAgainstKernelOverlay(t *testing.T) {
	needFuse(t)
	testutil.NeedTool(t, "cp")
	seeds, steps := diffSeeds, 80
	// FUSEFS_DIFF_SEEDS=N runs seeds 1..N (make fuzz), FUSEFS_DIFF_STEPS
	// the length of each sequence.
	if n, err := strconv.Atoi(os.Getenv("FUSEFS_DIFF_SEEDS")); err == nil && n > 0 {
		seeds = nil
		for i := 1; i <= n; i++ {
			seeds = append(seeds, uint64(i))
		}
	}
	if n, err := strconv.Atoi(os.Getenv("FUSEFS_DIFF_STEPS")); err == nil && n > 0 {
		steps = n
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runDifferential(t, seed, steps) })
	}
}

// FuzzDifferential is the differential test for as long as asked: each
// input seeds one random sequence of 10 to 265 operations (make fuzz
// FUZZTIME=10m runs it like every other fuzz target). The seed corpus
// below also runs in plain go test.
func FuzzDifferential(f *testing.F) {
	needFuse(f)
	testutil.NeedTool(f, "cp")
	f.Add(uint64(1000), uint8(70))
	f.Fuzz(func(t *testing.T, seed uint64, steps uint8) {
		runDifferential(t, seed, 10+int(steps))
	})
}

// buildLayers writes two lower layers with files, dirs, symlinks,
// hardlinks, whiteouts and an opaque dir.
func buildLayers(t *testing.T, r *rand.Rand, base string) []string {
	// Three layers, so directories merged from several of them are small
	// enough for the union's lookup-time name index.
	top, bottom, base0 := filepath.Join(base, "l0"), filepath.Join(base, "l1"), filepath.Join(base, "l2")
	mustMkdir(t, top)
	mustMkdir(t, bottom)
	mustMkdir(t, base0)
	old := time.Unix(1_600_000_000, 123456789)
	for li, l := range []string{base0, bottom, top} {
		for i := 0; i < 12; i++ {
			dir := l
			if r.IntN(3) > 0 {
				dir = filepath.Join(l, fmt.Sprintf("d%d", r.IntN(4)))
				if r.IntN(3) == 0 {
					dir = filepath.Join(dir, fmt.Sprintf("s%d", r.IntN(2)))
				}
			}
			mustMkdir(t, dir)
			p := filepath.Join(dir, fmt.Sprintf("f%d", r.IntN(8)))
			if _, err := os.Lstat(p); err == nil {
				continue
			}
			switch r.IntN(6) {
			case 0:
				os.Symlink(fmt.Sprintf("target%d", i), p)
			case 1:
				// (No whiteouts over nothing: kernel overlayfs lists
				// those of a single-layer dir in readdir but not in
				// lookup; the union hides them in both.)
				mustWrite(t, p, strings.Repeat(fmt.Sprint(li, i), 1+r.IntN(200)))
				os.Link(p, p+"h")
			default:
				mustWrite(t, p, strings.Repeat(fmt.Sprint(li, i), 1+r.IntN(200)))
				os.Chmod(p, os.FileMode(0o600+r.IntN(0o177)))
				unix.Lsetxattr(p, "user.l", []byte(fmt.Sprint(li)), 0)
			}
			os.Chtimes(p, old, old)
		}
	}
	// Whiteouts of bottom names and one opaque dir in the top.
	filepath.Walk(bottom, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == bottom {
			return nil
		}
		rel, _ := filepath.Rel(bottom, p)
		tp := filepath.Join(top, rel)
		if _, err := os.Lstat(tp); err == nil {
			return nil
		}
		if r.IntN(8) == 0 {
			mustMkdir(t, filepath.Dir(tp))
			mustWhiteout(t, tp)
			if fi.IsDir() {
				return filepath.SkipDir
			}
		} else if fi.IsDir() && r.IntN(6) == 0 {
			mustMkdir(t, tp)
			setX(t, tp, "trusted.overlay.opaque", "y")
			mustWrite(t, filepath.Join(tp, "inopaque"), "o")
			return filepath.SkipDir
		}
		return nil
	})
	// Directory times last, once their contents are written.
	for _, l := range []string{top, bottom, base0} {
		filepath.Walk(l, func(p string, fi os.FileInfo, err error) error {
			if err == nil {
				unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{unix.NsecToTimespec(old.UnixNano()), unix.NsecToTimespec(old.UnixNano())}, unix.AT_SYMLINK_NOFOLLOW)
			}
			return nil
		})
	}
	return []string{top, bottom, base0}
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	out, err := exec.Command("cp", "-a", "--preserve=all", src, dst).CombinedOutput()
	if err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", src, dst, err, out)
	}
}

func mountKernelOverlay(t *testing.T, lowers []string, upper, work, mnt string) {
	t.Helper()
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,index=on,redirect_dir=on", strings.Join(lowers, ":"), upper, work)
	if err := unix.Mount("overlay", mnt, "overlay", 0, opts); err != nil {
		testutil.Need(t, false, "kernel overlayfs mount: "+err.Error())
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
}

// op is one random operation, applied to a root.
type op struct {
	desc string
	do   func(root string) error
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}

// listPaths lists the view's paths (relative), sorted, for picking targets.
func listPaths(root string) (files, dirs []string) {
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if fi.IsDir() {
			dirs = append(dirs, rel)
		} else {
			files = append(files, rel)
		}
		return nil
	})
	sort.Strings(files)
	sort.Strings(dirs)
	return
}

func randomOp(r *rand.Rand, files, dirs []string, n int) op {
	pick := func(s []string) string {
		if len(s) == 0 {
			return "nonexistent"
		}
		return s[r.IntN(len(s))]
	}
	anyPath := func() string {
		if r.IntN(2) == 0 {
			return pick(files)
		}
		return pick(dirs)
	}
	newName := func() string { return filepath.Join(pick(dirs), fmt.Sprintf("n%d", n)) }
	fixed := time.Unix(1_500_000_000+int64(n), int64(n)*1000+7)
	switch r.IntN(22) {
	case 16:
		p := pick(files)
		return op{"open O_TRUNC " + p, func(root string) error {
			f, err := os.OpenFile(filepath.Join(root, p), os.O_WRONLY|os.O_TRUNC|syscall.O_NONBLOCK, 0)
			if err != nil {
				return err
			}
			return f.Close()
		}}
	case 17:
		p := anyPath()
		return op{"removexattr " + p, func(root string) error {
			return unix.Lremovexattr(filepath.Join(root, p), "user.l")
		}}
	case 18:
		p, q := anyPath(), anyPath()
		return op{"exchange " + p + " " + q, func(root string) error {
			return unix.Renameat2(unix.AT_FDCWD, filepath.Join(root, p), unix.AT_FDCWD, filepath.Join(root, q), unix.RENAME_EXCHANGE)
		}}
	case 19:
		p, q := anyPath(), anyPath()
		if r.IntN(2) == 0 {
			q = newName()
		}
		return op{"rename noreplace " + p + " " + q, func(root string) error {
			return unix.Renameat2(unix.AT_FDCWD, filepath.Join(root, p), unix.AT_FDCWD, filepath.Join(root, q), unix.RENAME_NOREPLACE)
		}}
	case 20:
		p := anyPath()
		return op{"unlink-or-rmdir " + p, func(root string) error {
			if r := filepath.Join(root, p); len(p)%2 == 0 {
				return syscall.Unlink(r)
			} else {
				return syscall.Rmdir(r)
			}
		}}
	case 21:
		q := newName()
		return op{"mknod chr " + q, func(root string) error {
			return syscall.Mknod(filepath.Join(root, q), syscall.S_IFCHR|0o600, int(unix.Mkdev(1, 3)))
		}}
	case 0:
		p := newName()
		return op{"create " + p, func(root string) error {
			return os.WriteFile(filepath.Join(root, p), []byte("created"+p), 0o640)
		}}
	case 1:
		p := pick(files)
		return op{"append " + p, func(root string) error {
			f, err := os.OpenFile(filepath.Join(root, p), os.O_WRONLY|os.O_APPEND|syscall.O_NONBLOCK, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString("appended")
			f.Close()
			return err
		}}
	case 2:
		p := pick(files)
		sz := int64(r.IntN(50))
		return op{fmt.Sprint("truncate ", p, sz), func(root string) error { return syscall.Truncate(filepath.Join(root, p), sz) }}
	case 3:
		p := anyPath()
		m := uint32(0o500 + r.IntN(0o277))
		return op{fmt.Sprintf("chmod %s %o", p, m), func(root string) error { return syscall.Chmod(filepath.Join(root, p), m) }}
	case 4:
		p := anyPath()
		id := 1000 + r.IntN(3)
		return op{fmt.Sprint("lchown ", p, id), func(root string) error { return syscall.Lchown(filepath.Join(root, p), id, id+1) }}
	case 5:
		p := anyPath()
		return op{"utimes " + p, func(root string) error {
			ts := []unix.Timespec{unix.NsecToTimespec(fixed.UnixNano()), unix.NsecToTimespec(fixed.UnixNano())}
			return unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(root, p), ts, unix.AT_SYMLINK_NOFOLLOW)
		}}
	case 6:
		p := pick(files)
		return op{"setxattr " + p, func(root string) error {
			return unix.Lsetxattr(filepath.Join(root, p), "user.op", []byte(fmt.Sprint(n)), 0)
		}}
	case 7:
		p, q := pick(files), newName()
		return op{"link " + p + " " + q, func(root string) error { return os.Link(filepath.Join(root, p), filepath.Join(root, q)) }}
	case 8:
		q := newName()
		return op{"symlink " + q, func(root string) error { return os.Symlink("../t"+q, filepath.Join(root, q)) }}
	case 9, 10:
		p := pick(files)
		return op{"unlink " + p, func(root string) error { return syscall.Unlink(filepath.Join(root, p)) }}
	case 11:
		q := newName()
		return op{"mkdir " + q, func(root string) error { return syscall.Mkdir(filepath.Join(root, q), 0o751) }}
	case 12:
		p := pick(dirs)
		return op{"rmdir " + p, func(root string) error { return syscall.Rmdir(filepath.Join(root, p)) }}
	case 13:
		p := anyPath()
		q := newName()
		if r.IntN(2) == 0 {
			q = anyPath()
		}
		return op{"rename " + p + " " + q, func(root string) error { return syscall.Rename(filepath.Join(root, p), filepath.Join(root, q)) }}
	case 14:
		q := newName()
		return op{"mkfifo " + q, func(root string) error { return syscall.Mknod(filepath.Join(root, q), syscall.S_IFIFO|0o640, 0) }}
	default:
		p := pick(files)
		return op{"write " + p, func(root string) error {
			f, err := os.OpenFile(filepath.Join(root, p), os.O_WRONLY|syscall.O_NONBLOCK, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteAt([]byte("overwritten"), 3)
			f.Close()
			return err
		}}
	}
}

func runDifferential(t *testing.T, seed uint64, steps int) {
	r := rand.New(rand.NewPCG(seed, 0x1a7e5f5))
	base := t.TempDir()
	layers := buildLayers(t, r, filepath.Join(base, "src"))
	var kLowers, uLowers []string
	for i, l := range layers {
		k, u := filepath.Join(base, fmt.Sprint("k", i)), filepath.Join(base, fmt.Sprint("u", i))
		copyTree(t, l, k)
		copyTree(t, l, u)
		kLowers, uLowers = append(kLowers, k), append(uLowers, u)
	}
	for _, d := range []string{"kup", "kwork", "kmnt", "uup", "uwork"} {
		mustMkdir(t, filepath.Join(base, d))
	}
	kmnt := filepath.Join(base, "kmnt")
	mountKernelOverlay(t, kLowers, filepath.Join(base, "kup"), filepath.Join(base, "kwork"), kmnt)
	// dev,suid: FUSE mounts default to nodev,nosuid; overlayfs does not.
	umnt := mountT(t, Options{Lowers: uLowers, Upper: filepath.Join(base, "uup"), Work: filepath.Join(base, "uwork"), ExtraMountOptions: []string{"dev", "suid"}})
	start := time.Now().Add(-time.Minute)

	if diff := compareTrees(kmnt, umnt, start); diff != "" {
		t.Fatalf("trees differ before any operation:\n%s", diff)
	}
	var log []string
	for i := 0; i < steps; i++ {
		files, dirs := listPaths(kmnt)
		o := randomOp(r, files, dirs, i)
		ke, ue := errnoOf(o.do(kmnt)), errnoOf(o.do(umnt))
		log = append(log, fmt.Sprintf("%d %s: kernel %v union %v", i, o.desc, ke, ue))
		if ke != ue {
			t.Fatalf("op %s: kernel overlay says %q, union %q\nops so far:\n%s", o.desc, ke, ue, strings.Join(log, "\n"))
		}
	}
	if diff := compareTrees(kmnt, umnt, start); diff != "" {
		t.Fatalf("trees differ after:\n%s\n\ndifferences:\n%s", strings.Join(log, "\n"), diff)
	}
	// A fresh (read-only) mount of what the union wrote shows the same:
	// origins, the hardlink index and redirects persist.
	umnt2 := mountT(t, Options{Lowers: uLowers, Upper: filepath.Join(base, "uup"), Work: filepath.Join(base, "uwork"), ReadOnly: true})
	if diff := compareTrees(kmnt, umnt2, start); diff != "" {
		t.Fatalf("a remount of the union differs from the kernel:\n%s\n\nops:\n%s", diff, strings.Join(log, "\n"))
	}
	if a, b := inodeMap(umnt), inodeMap(umnt2); a != b {
		t.Errorf("inode numbers changed across remount:\n%s\n---\n%s", a, b)
	}
	// The upper the union wrote must read the same under kernel overlayfs.
	kmnt2, kwork2 := filepath.Join(base, "kmnt2"), filepath.Join(base, "kwork2")
	mustMkdir(t, kmnt2)
	mustMkdir(t, kwork2)
	if err := unix.Mount("overlay", kmnt2, "overlay", unix.MS_RDONLY, fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on",
		strings.Join(uLowers, ":"), filepath.Join(base, "uup"), kwork2)); err != nil {
		t.Fatalf("kernel overlay over the union's upper: %v", err)
	}
	defer unix.Unmount(kmnt2, unix.MNT_DETACH)
	// Every name of a copied-up lower hardlink group is linked in the
	// upper, under renamed directories too.
	if diff := compareTrees(kmnt2, umnt, start); diff != "" {
		t.Errorf("kernel overlayfs reads the union's upper differently:\n%s\n\nops:\n%s", diff, strings.Join(log, "\n"))
	}
}

// entryInfo is what the comparison looks at for one path.
type entryInfo struct {
	desc  string
	group string // first path of its hardlink group
}

func describe(root string, start time.Time) (map[string]entryInfo, error) {
	out := map[string]entryInfo{}
	byIno := map[uint64]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		d := fmt.Sprintf("mode=%o uid=%d gid=%d", st.Mode, st.Uid, st.Gid)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			d += fmt.Sprintf(" size=%d sha=%x", st.Size, sha256.Sum256(b))
		case syscall.S_IFLNK:
			tg, _ := os.Readlink(p)
			d += " -> " + tg
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFDIR && time.Unix(st.Mtim.Unix()).Before(start) {
			// Times set by the layers or by utimes are defined;
			// those of new changes are "now" on each side.
			d += fmt.Sprintf(" mtime=%d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFLNK {
			d += " xattrs=" + xattrSummary(p)
		}
		g := rel
		if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			if first, ok := byIno[st.Ino]; ok {
				g = first
			} else {
				byIno[st.Ino] = rel
			}
		}
		out[rel] = entryInfo{desc: d, group: g}
		return nil
	})
	return out, err
}

func xattrSummary(p string) string {
	names, err := listXattrs(p)
	if err != nil {
		return "err:" + err.Error()
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		if whiteout.IsPrivateXattr(n) {
			// Kernel overlayfs shows the union's own bookkeeping.
			continue
		}
		v, _ := getXattr(p, n)
		parts = append(parts, n+"="+string(v))
	}
	return strings.Join(parts, ",")
}

func compareTrees(kernel, union string, start time.Time) string {
	return compareTreesSkipping(kernel, union, start, nil)
}

func compareTreesSkipping(kernel, union string, start time.Time, skip map[string]bool) string {
	k, err := describe(kernel, start)
	if err != nil {
		return "walk kernel: " + err.Error()
	}
	u, err := describe(union, start)
	if err != nil {
		return "walk union: " + err.Error()
	}
	var diffs []string
	for p, ki := range k {
		if skip[p] {
			continue
		}
		ui, ok := u[p]
		switch {
		case !ok:
			diffs = append(diffs, "only in kernel: "+p+" "+ki.desc)
		case ki.desc != ui.desc:
			diffs = append(diffs, fmt.Sprintf("%s:\n  kernel %s\n  union  %s", p, ki.desc, ui.desc))
		case ki.group != ui.group && !skip[ki.group] && !skip[ui.group]:
			diffs = append(diffs, fmt.Sprintf("%s: hardlinked with %s in kernel, %s in union", p, ki.group, ui.group))
		}
	}
	for p, ui := range u {
		if _, ok := k[p]; !ok {
			diffs = append(diffs, "only in union: "+p+" "+ui.desc)
		}
	}
	sort.Strings(diffs)
	return strings.Join(diffs, "\n")
}

// TestCompareTreesDetects guards the oracle itself: a difference in
// content, mode, xattrs or hardlinks between two trees must be reported.
func TestCompareTreesDetects(t *testing.T) {
	start := time.Now().Add(-time.Minute)
	mk := func() string {
		d := t.TempDir()
		mustWrite(t, filepath.Join(d, "a"), "same")
		mustWrite(t, filepath.Join(d, "b"), "same")
		return d
	}
	for name, change := range map[string]func(string){
		"content": func(d string) { mustWrite(t, filepath.Join(d, "a"), "diff") },
		"mode":    func(d string) { os.Chmod(filepath.Join(d, "a"), 0o600) },
		"xattr":   func(d string) { setX(t, filepath.Join(d, "a"), "user.x", "1") },
		"link": func(d string) {
			os.Remove(filepath.Join(d, "b"))
			os.Link(filepath.Join(d, "a"), filepath.Join(d, "b"))
		},
		"extra": func(d string) { mustWrite(t, filepath.Join(d, "c"), "") },
	} {
		x, y := mk(), mk()
		if diff := compareTrees(x, y, start); diff != "" {
			t.Fatalf("identical trees differ: %s", diff)
		}
		change(y)
		if compareTrees(x, y, start) == "" {
			t.Errorf("%s: difference not detected", name)
		}
	}
}

// inodeMap renders path -> st_ino of a tree.
func inodeMap(root string) string {
	var lines []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			rel, _ := filepath.Rel(root, p)
			lines = append(lines, fmt.Sprintf("%s %d", rel, fi.Sys().(*syscall.Stat_t).Ino))
		}
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
