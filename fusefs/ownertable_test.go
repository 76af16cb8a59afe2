package fusefs

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/ownertable"
	"github.com/layerfs/layerfs/statoverride"
)

func rec(uid, gid, mode uint32) statoverride.Stat {
	return statoverride.Stat{UID: uid, GID: gid, Mode: mode}
}

// specialLower fills a lower as a rootless import does: symlinks, FIFOs
// and a socket owned by whoever runs the test, their image owners in a
// table. It returns the table's path.
func specialLower(t *testing.T, lower string) string {
	t.Helper()
	mustMkdir(t, filepath.Join(lower, "bin"))
	mustMkdir(t, filepath.Join(lower, "run"))
	mustMkdir(t, filepath.Join(lower, "home/u"))
	for _, l := range [][2]string{{"bin/sh", "busybox"}, {"home/u/link", "/etc"}, {"bin/plain", "x"}, {"bin/odd", "y"}} {
		if err := os.Symlink(l[1], filepath.Join(lower, l[0])); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"run/initctl", "home/u/fifo"} {
		if err := unix.Mkfifo(filepath.Join(lower, f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(lower, "run/sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	table := filepath.Join(filepath.Dir(lower), filepath.Base(lower)+"."+ownertable.FileName)
	if err := ownertable.WriteFile(table, ownertable.Table{
		"bin/sh":      rec(0, 0, unix.S_IFLNK|0o777),
		"home/u/link": rec(1000, 1000, unix.S_IFLNK|0o777),
		"run/initctl": rec(0, 0, unix.S_IFIFO|0o600),
		"home/u/fifo": rec(65534, 65534, unix.S_IFIFO|0o2640),
		"run/sock":    rec(7, 8, unix.S_IFSOCK|0o755),
		"bin/odd":     rec(9, 9, unix.S_IFIFO|0o644), // another type: not this object's
		"bin/gone":    rec(9, 9, unix.S_IFLNK|0o777), // nothing there
	}); err != nil {
		t.Fatal(err)
	}
	return table
}

type shown struct {
	path     string
	uid, gid uint32
	mode     uint32
}

func checkShown(t *testing.T, mnt string, want []shown) {
	t.Helper()
	for _, w := range want {
		st := lstat(t, filepath.Join(mnt, w.path))
		if st.Uid != w.uid || st.Gid != w.gid || st.Mode != w.mode {
			t.Errorf("%s shows %d:%d %#o, want %d:%d %#o", w.path, st.Uid, st.Gid, st.Mode, w.uid, w.gid, w.mode)
		}
	}
}

// TestSpecialOwnersShown: lstat of a lower's symlinks, FIFOs and sockets
// shows their table records, as the override_stat xattr shows for other
// objects: IDs as recorded whatever the ID map (which still maps the
// owners on disk), squash options on top; a symlink's mode stays 0777;
// a record of another type, or none, leaves the object as on disk.
func TestSpecialOwnersShown(t *testing.T) {
	lowers, upper, work := layerDirs(t, 2)
	table := specialLower(t, lowers[1])
	mustWrite(t, filepath.Join(lowers[0], "top"), "t")
	me := uint32(os.Geteuid())
	records := []shown{
		{"bin/sh", 0, 0, unix.S_IFLNK | 0o777},
		{"home/u/link", 1000, 1000, unix.S_IFLNK | 0o777},
		{"run/initctl", 0, 0, unix.S_IFIFO | 0o600},
		{"home/u/fifo", 65534, 65534, unix.S_IFIFO | 0o2640},
		{"run/sock", 7, 8, unix.S_IFSOCK | 0o755},
	}
	opts := Options{Lowers: lowers, Upper: upper, Work: work, LowerOwnerTables: []string{"", table}}
	t.Run("no map", func(t *testing.T) {
		mnt := mountT(t, opts)
		checkShown(t, mnt, append(records,
			shown{"bin/plain", me, me, unix.S_IFLNK | 0o777},
			shown{"bin/odd", me, me, unix.S_IFLNK | 0o777}))
		if target, err := os.Readlink(filepath.Join(mnt, "bin/sh")); err != nil || target != "busybox" {
			t.Errorf("readlink bin/sh = %q, %v", target, err)
		}
		// A listing first, then stat (readdirplus): the same answer.
		run(t, "ls", "-lnR", mnt)
		checkShown(t, mnt, records)
	})
	t.Run("uid map", func(t *testing.T) {
		o := opts
		o.UIDMap = []IDMap{{ContainerID: 0, HostID: me + 100000, Size: 65536}}
		o.GIDMap = o.UIDMap
		mnt := mountT(t, o)
		checkShown(t, mnt, append(records, shown{"bin/plain", OverflowID, OverflowID, unix.S_IFLNK | 0o777}))
	})
	t.Run("squash", func(t *testing.T) {
		o := opts
		five, six := uint32(5), uint32(6)
		o.SquashUID, o.SquashGID = &five, &six
		mnt := mountT(t, o)
		checkShown(t, mnt, []shown{{"home/u/link", 5, 6, unix.S_IFLNK | 0o777}, {"home/u/fifo", 5, 6, unix.S_IFIFO | 0o2640}})
	})
	t.Run("read-only, no upper", func(t *testing.T) {
		mnt := mountT(t, Options{Lowers: lowers, LowerOwnerTables: []string{"", table}})
		checkShown(t, mnt, records)
	})
	t.Run("bad table", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad")
		mustWrite(t, bad, "nonsense\n")
		mnt := mountT(t, Options{Lowers: lowers, LowerOwnerTables: []string{"", bad}})
		checkShown(t, mnt, []shown{{"home/u/link", me, me, unix.S_IFLNK | 0o777}})
	})
}

// TestSpecialOwnersFollowChanges: copy-up (rename of a lower symlink,
// utimes of a FIFO, a link) carries records into the upper table; a
// renamed lower directory keeps its children's; lchown and chmod of
// recorded objects change the record, never the disk; unlink and rename
// over drop what goes; everything holds across a remount and is what the
// upper table file says.
func TestSpecialOwnersFollowChanges(t *testing.T) {
	needFuse(t)
	lowers, upper, work := layerDirs(t, 1)
	table := specialLower(t, lowers[0])
	upperTable := filepath.Join(work, ownertable.FileName)
	opts := Options{Lowers: lowers, Upper: upper, Work: work, LowerOwnerTables: []string{table}, UpperOwnerTable: upperTable,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	mnt := t.TempDir()
	mount := func() *Server {
		t.Helper()
		srv, err := Mount(mnt, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Unmount() })
		return srv
	}
	srv := mount()
	p := func(rel string) string { return filepath.Join(mnt, rel) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Rename(p("bin/sh"), p("bin/sh2")))                               // copy-up by rename
	must(unix.Lutimes(p("run/initctl"), []unix.Timeval{{Sec: 1}, {Sec: 2}})) // copy-up by utimes
	must(os.Rename(p("home/u"), p("home/v")))                                // a lower dir: redirect, no copy-up
	checkShown(t, mnt, []shown{{"home/v/link", 1000, 1000, unix.S_IFLNK | 0o777}})
	must(os.Lchown(p("home/v/link"), 4242, 4343)) // recorded: the record changes
	must(unix.Chmod(p("home/v/fifo"), 0o1604))
	must(os.Link(p("home/v/fifo"), p("run/fifo-link")))
	must(syscall.Rename(p("run/sock"), p("bin/plain"))) // over an unrecorded symlink
	must(os.Remove(p("bin/odd")))
	want := []shown{
		{"bin/sh2", 0, 0, unix.S_IFLNK | 0o777},
		{"run/initctl", 0, 0, unix.S_IFIFO | 0o600},
		{"home/v/link", 4242, 4343, unix.S_IFLNK | 0o777},
		{"home/v/fifo", 65534, 65534, unix.S_IFIFO | 0o1604},
		{"run/fifo-link", 65534, 65534, unix.S_IFIFO | 0o1604},
		{"bin/plain", 7, 8, unix.S_IFSOCK | 0o755},
	}
	checkShown(t, mnt, want)
	for _, gone := range []string{"bin/sh", "run/sock", "bin/odd"} {
		if _, err := os.Lstat(p(gone)); !os.IsNotExist(err) {
			t.Errorf("%s: %v, want it gone", gone, err)
		}
	}
	if st := lstat(t, filepath.Join(upper, "home/v/link")); st.Uid != uint32(os.Geteuid()) {
		t.Errorf("lchown of a recorded symlink changed its owner on disk to %d", st.Uid)
	}
	if st := lstat(t, filepath.Join(upper, "home/v/fifo")); st.Mode&0o7777 != 0o600 {
		t.Errorf("chmod of a recorded FIFO changed its mode on disk to %#o", st.Mode&0o7777)
	}
	tab, _, err := ownertable.ReadFile(upperTable)
	must(err)
	wantTab := ownertable.Table{
		"bin/sh2":       rec(0, 0, unix.S_IFLNK|0o777),
		"run/initctl":   rec(0, 0, unix.S_IFIFO|0o600),
		"home/v/link":   rec(4242, 4343, unix.S_IFLNK|0o777),
		"home/v/fifo":   rec(65534, 65534, unix.S_IFIFO|0o1604),
		"run/fifo-link": rec(65534, 65534, unix.S_IFIFO|0o1604),
		"bin/plain":     rec(7, 8, unix.S_IFSOCK|0o755),
	}
	if fmt.Sprint(tab) != fmt.Sprint(wantTab) {
		t.Errorf("upper table:\n%v\nwant\n%v", tab, wantTab)
	}
	must(srv.Unmount())
	waitUnmounted(t, mnt)
	mount()
	checkShown(t, mnt, want)
	// After a remount: unlink drops, exchange swaps, and a new object at a
	// name does not inherit its old record.
	must(os.Remove(p("bin/sh2")))
	must(os.Symlink("new", p("bin/sh2")))
	must(unix.Renameat2(unix.AT_FDCWD, p("run/initctl"), unix.AT_FDCWD, p("home/v/fifo"), unix.RENAME_EXCHANGE))
	me := uint32(os.Geteuid())
	checkShown(t, mnt, []shown{
		{"bin/sh2", me, me, unix.S_IFLNK | 0o777},
		{"run/initctl", 65534, 65534, unix.S_IFIFO | 0o1604},
		{"home/v/fifo", 0, 0, unix.S_IFIFO | 0o600},
	})
}

// waitUnmounted waits until mnt is no mount point any more.
func waitUnmounted(t *testing.T, mnt string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		var a, b unix.Stat_t
		if unix.Stat(mnt, &a) == nil && unix.Stat(filepath.Dir(mnt), &b) == nil && a.Dev == b.Dev {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s still mounted", mnt)
}

// TestUpperOwnerTableFile: the union appends a line per change and
// rewrites the file compact once it holds twice what it needs, or when a
// crash cut its last line short; the file always reads back as the table.
func TestUpperOwnerTableFile(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	name := filepath.Join(work, ownertable.FileName)
	if err := os.WriteFile(name, []byte("\"keep\" 1:1:0777:symlink\n\"torn\" 2:2:07"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := Options{Lowers: lowers, Upper: upper, Work: work, UpperOwnerTable: name, Logger: slog.New(slog.DiscardHandler)}
	u, err := newUnion(o.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	defer u.close()
	tab := u.owners.upper
	if fmt.Sprint(tab.t) != fmt.Sprint(ownertable.Table{"keep": rec(1, 1, unix.S_IFLNK|0o777)}) || !tab.torn {
		t.Fatalf("loaded %v torn=%v", tab.t, tab.torn)
	}
	check := func(want ownertable.Table, maxLines int) {
		t.Helper()
		got, info, err := ownertable.ReadFile(name)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) || info.Torn {
			t.Fatalf("file reads %v (%+v, %v), want %v", got, info, err, want)
		}
		if info.Lines > maxLines {
			t.Fatalf("file holds %d lines for %d entries", info.Lines, len(want))
		}
	}
	want := ownertable.Table{"keep": rec(1, 1, unix.S_IFLNK|0o777)}
	for i := range 500 {
		p := fmt.Sprintf("d%d/l", i%10)
		r := rec(uint32(i), 0, unix.S_IFLNK|0o777)
		if err := tab.set(u, p, r, nil); err != nil {
			t.Fatal(err)
		}
		want[p] = r
		check(want, 2*len(want)+64)
	}
	tab.move(u, "d1", "e1", false)
	want["e1/l"] = want["d1/l"]
	delete(want, "d1/l")
	tab.move(u, "d2/l", "d3/l", false)
	want["d3/l"] = want["d2/l"]
	delete(want, "d2/l")
	tab.move(u, "d4", "d5", true)
	want["d4/l"], want["d5/l"] = want["d5/l"], want["d4/l"]
	tab.drop(u, "keep")
	delete(want, "keep")
	tab.drop(u, "never-there")
	check(want, 2*len(want)+64)
	if ents, _ := os.ReadDir(filepath.Join(work, "layerfs/tmp")); len(ents) != 0 {
		t.Errorf("compaction left temp files: %v", ents)
	}
}

// TestSpecialOwnersChownNotNative: where the daemon may not give an
// object the owner asked for (a plain user's daemon; here an ID map that
// maps none of the IDs asked for), lchown of a new or copied-up symlink
// and chown and chmod of a FIFO are kept in the upper table, shown, and
// still shown after a remount; the disk keeps the daemon's owner.
func TestSpecialOwnersChownNotNative(t *testing.T) {
	needFuse(t)
	lowers, upper, work := layerDirs(t, 1)
	if err := os.Symlink("t", filepath.Join(lowers[0], "lower-link")); err != nil {
		t.Fatal(err)
	}
	me := uint32(os.Geteuid())
	only0 := []IDMap{{ContainerID: 0, HostID: me, Size: 1}}
	opts := Options{Lowers: lowers, Upper: upper, Work: work, UIDMap: only0, GIDMap: only0,
		UpperOwnerTable: filepath.Join(work, ownertable.FileName), Logger: slog.New(slog.DiscardHandler)}
	mnt := t.TempDir()
	srv, err := Mount(mnt, opts)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() { srv.Unmount() })
	m := func(rel string) string { return filepath.Join(mnt, rel) }
	if err := os.Symlink("x", m("new-link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(m("fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(m("new-link"), 1000, -1); err != nil {
		t.Fatalf("lchown new-link: %v", err)
	}
	for _, l := range []string{"lower-link", "fifo"} {
		if err := os.Lchown(m(l), 1000, 1001); err != nil {
			t.Fatalf("lchown %s: %v", l, err)
		}
	}
	if err := unix.Chmod(m("fifo"), 0o2640); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, m("new-link"), 0o600, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		t.Errorf("chmod of a symlink itself succeeded")
	}
	want := []shown{
		{"new-link", 1000, 0, unix.S_IFLNK | 0o777},
		{"lower-link", 1000, 1001, unix.S_IFLNK | 0o777},
		{"fifo", 1000, 1001, unix.S_IFIFO | 0o2640},
	}
	checkShown(t, mnt, want)
	if st := lstat(t, filepath.Join(upper, "fifo")); st.Uid != me || st.Mode&0o7777 != 0o644 {
		t.Errorf("the FIFO on disk: %d %#o, want the daemon's owner, mode unchanged", st.Uid, st.Mode&0o7777)
	}
	// Back to an ID the map has: the record says so (the object is
	// recorded now), the disk still does not change.
	if err := os.Lchown(m("fifo"), 0, 0); err != nil {
		t.Fatal(err)
	}
	want[2] = shown{"fifo", 0, 0, unix.S_IFIFO | 0o2640}
	checkShown(t, mnt, want)
	if err := srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	waitUnmounted(t, mnt)
	srv2, err := Mount(mnt, opts)
	if err != nil {
		t.Fatalf("remount: %v", err)
	}
	t.Cleanup(func() { srv2.Unmount() })
	checkShown(t, mnt, want)
}
