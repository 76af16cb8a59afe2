package e2e

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/internal/imagegen"
	"github.com/layerfs/layerfs/internal/testutil"
)

// storeWithSample imports the generated three-layer sample image as demo:1.
func storeWithSample(t *testing.T) *store {
	t.Helper()
	testutil.NeedRootOrRootlessPass(t)
	s := newStore(t)
	layers, err := imagegen.SampleLayers()
	must(t, err)
	dir := filepath.Join(t.TempDir(), "image")
	_, err = imagegen.WriteOCILayout(dir, layers, compression.Gzip, "demo:1")
	must(t, err)
	s.ok(nil, "import-image", dir)
	return s
}

// mountView mounts ref at a fresh target with driver and registers the
// unmount for cleanup.
func (s *store) mountView(ref, driver string, extra ...string) string {
	s.t.Helper()
	target := filepath.Join(s.t.TempDir(), "mnt")
	must(s.t, os.Mkdir(target, 0o755))
	unmountOnCleanup(s.t, target)
	// Runs before the plain unmount above: layerfs umount also waits for
	// the daemon to exit, so it cannot write into the store while the
	// test's temp dirs are removed.
	s.t.Cleanup(func() {
		if isMounted(target) {
			s.run(nil, "umount", target)
		}
	})
	args := append([]string{"mount", "--driver", driver}, extra...)
	s.ok(nil, append(args, ref, target)...)
	if !isMounted(target) {
		s.t.Fatalf("mount returned before %s was mounted", target)
	}
	return target
}

type mountEntry struct {
	Target, View, Driver, State string
	PID                         int
}

func (s *store) mounts() []mountEntry {
	s.t.Helper()
	var m []mountEntry
	must(s.t, json.Unmarshal([]byte(s.ok(nil, "mounts", "--json").stdout), &m))
	return m
}

// change makes the changes the lifecycle scenario asks for, in a view.
func change(t *testing.T, mnt string) {
	t.Helper()
	must(t, os.WriteFile(filepath.Join(mnt, "etc/hostname"), []byte("changed\n"), 0o644))
	must(t, os.Remove(filepath.Join(mnt, "bin/tool-alias")))
	must(t, os.RemoveAll(filepath.Join(mnt, "var/cache")))
	must(t, os.MkdirAll(filepath.Join(mnt, "var/cache/new"), 0o755))
	must(t, os.Rename(filepath.Join(mnt, "home/user"), filepath.Join(mnt, "home/renamed")))
	must(t, os.Link(filepath.Join(mnt, "etc/hostname"), filepath.Join(mnt, "etc/hostname.link")))
	must(t, os.Chmod(filepath.Join(mnt, "bin/tool"), 0o700))
	must(t, os.WriteFile(filepath.Join(mnt, "added"), []byte("new file\n"), 0o600))
}

// snapshot describes a tree: type, mode, size, content hash or link target.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		desc := fi.Mode().String()
		switch {
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + sha256hex(data)
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && !fi.IsDir() {
			desc += " uid=" + strconv.Itoa(int(st.Uid)) + " nlink=" + strconv.Itoa(int(st.Nlink))
		}
		out[rel] = desc
		return nil
	})
	must(t, err)
	return out
}

// withoutOwners drops the uid from a snapshot.
func withoutOwners(snap map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range snap {
		if i := strings.Index(v, " uid="); i >= 0 {
			j := strings.Index(v[i+1:], " ")
			if j < 0 {
				v = v[:i]
			} else {
				v = v[:i] + v[i+1+j:]
			}
		}
		out[k] = v
	}
	return out
}

func sameTree(t *testing.T, what string, a, b map[string]string) {
	t.Helper()
	for k, v := range a {
		if b[k] != v {
			t.Errorf("%s: %s is %q, then %q", what, k, v, b[k])
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			t.Errorf("%s: %s appeared", what, k)
		}
	}
}

func TestViewLifecycleAcrossDrivers(t *testing.T) {
	for _, order := range [][2]string{{"kernel", "fuse"}, {"fuse", "kernel"}, {"fuse", "fuse"}} {
		t.Run(order[0]+"-then-"+order[1], func(t *testing.T) {
			if order[0] == "kernel" || order[1] == "kernel" {
				testutil.NeedRootOnly(t, "kernel overlayfs outside a user namespace")
			}
			s := storeWithSample(t)
			view := s.ok(nil, "create", "--name", "work", "demo:1").lastLine()
			mnt := s.mountView("work", order[0])
			m := s.mounts()
			if len(m) != 1 || m[0].Driver != order[0] || m[0].State != "mounted" || m[0].View != view {
				t.Fatalf("mount table: %+v", m)
			}
			change(t, mnt)
			before := snapshot(t, mnt)
			if _, ok := before["home/renamed/notes.txt"]; !ok {
				t.Fatal("renamed lower dir lost its contents")
			}
			s.ok(nil, "umount", mnt)
			if isMounted(mnt) || len(s.mounts()) != 0 {
				t.Fatal("umount left the mount or its table entry")
			}
			again := s.mountView(view[:10], order[1])
			sameTree(t, order[0]+" then "+order[1], before, snapshot(t, again))
			s.fails(nil, []string{"rm-view", "work"}, "mounted")
			s.ok(nil, "umount", "work")

			// Commit, export, and let umoci find the changes.
			diff := s.ok(nil, "diff", "work").stdout
			for _, want := range []string{"A /added", "C /etc/hostname", "D /bin/tool-alias", "A /home/renamed", "D /home/user"} {
				if !strings.Contains(diff, want+"\n") {
					t.Fatalf("diff lacks %q:\n%s", want, diff)
				}
			}
			layer := s.ok(nil, "commit", "--name", "demo:2", "work").lastLine()
			if d := s.ok(nil, "diff", "work").stdout; d != "" {
				t.Fatalf("after commit the view should be empty, diff says:\n%s", d)
			}
			var img struct {
				Layers []string `json:"layers"`
			}
			must(t, json.Unmarshal([]byte(s.ok(nil, "inspect", "demo:2").stdout), &img))
			if len(img.Layers) != 4 || img.Layers[3] != layer {
				t.Fatalf("demo:2 layers %v, want the committed %s on top", img.Layers, layer)
			}
			testutil.NeedTool(t, "umoci")
			layout := filepath.Join(t.TempDir(), "layout")
			s.ok(nil, "export-image", "demo:2", layout)
			bundle := filepath.Join(t.TempDir(), "bundle")
			unpack := []string{"unpack", "--image", layout + ":2", bundle}
			if os.Geteuid() != 0 {
				unpack = append([]string{"--log", "error", "unpack", "--rootless"}, unpack[1:]...)
			}
			if out, err := exec.Command("umoci", unpack...).CombinedOutput(); err != nil {
				t.Fatalf("umoci unpack: %v: %s", err, out)
			}
			unpacked := snapshot(t, filepath.Join(bundle, "rootfs"))
			if os.Geteuid() != 0 {
				// umoci --rootless gives every file to the user; the view
				// shows the image's owners. Compare everything else.
				before, unpacked = withoutOwners(before), withoutOwners(unpacked)
			}
			sameTree(t, "view vs umoci unpack of the committed image", before, unpacked)
			s.ok(nil, "rm-view", "work")
		})
	}
}

func TestMountAutoFallsBackToUnion(t *testing.T) {
	s := storeWithSample(t)
	target := filepath.Join(t.TempDir(), "mnt")
	must(t, os.Mkdir(target, 0o755))
	unmountOnCleanup(t, target)
	cmd := exec.Command(binPath, "--store", s.root, "mount", "demo:1", target)
	cmd.Env = append(os.Environ(), "LAYERFS_KERNEL_PROBE=fail")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "FUSE union") {
		t.Fatalf("mount with a failing probe: %v: %s", err, out)
	}
	if m := s.mounts(); len(m) != 1 || m[0].Driver != "fuse" {
		t.Fatalf("mount table: %+v", m)
	}
	s.ok(nil, "umount", target)
	out2 := s.ok(nil, "mount", "demo:1", target)
	if os.Geteuid() == 0 {
		if !strings.Contains(out2.stderr, "kernel overlay driver") {
			t.Fatalf("auto without a forced failure did not pick the kernel as root: %s", out2.stderr)
		}
	} else if !strings.Contains(out2.stderr, "FUSE union") || !strings.Contains(out2.stderr, "not root") {
		t.Fatalf("auto as a plain user should pick the union and say the kernel needs root: %s", out2.stderr)
	}
	s.ok(nil, "umount", target)
}

func TestKilledDaemonIsReportedAndCleanedUp(t *testing.T) {
	s := storeWithSample(t)
	view := s.ok(nil, "create", "demo:1").lastLine()
	mnt := s.mountView(view, "fuse")
	must(t, os.WriteFile(filepath.Join(mnt, "complete"), []byte("all of it\n"), 0o644))
	m := s.mounts()
	must(t, unix.Kill(m[0].PID, unix.SIGKILL))
	deadline := time.Now().Add(5 * time.Second)
	for s.mounts()[0].State != "dead" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if st := s.mounts()[0].State; st != "dead" {
		t.Fatalf("mounts reports %q for a killed daemon", st)
	}
	if _, err := os.Stat(filepath.Join(mnt, "complete")); err == nil {
		t.Fatal("a dead mount still answers")
	}
	s.ok(nil, "umount", mnt)
	if isMounted(mnt) || len(s.mounts()) != 0 {
		t.Fatal("umount did not clean up a dead mount")
	}
	again := s.mountView(view, "fuse")
	if data, err := os.ReadFile(filepath.Join(again, "complete")); err != nil || string(data) != "all of it\n" {
		t.Fatalf("completed write lost after kill -9: %q %v", data, err)
	}
	s.ok(nil, "umount", again)
}

func TestMountTmpAndSigterm(t *testing.T) {
	s := storeWithSample(t)
	for _, driver := range []string{"kernel", "fuse"} {
		t.Run("tmp-"+driver, func(t *testing.T) {
			if driver == "kernel" {
				testutil.NeedRootOnly(t, "kernel overlayfs outside a user namespace")
			}
			s := &store{t: t, root: s.root}
			r := s.ok(nil, "mount", "--tmp", "--driver", driver, "demo:1")
			dir := r.lastLine()
			if !filepath.IsAbs(dir) {
				t.Fatalf("mount --tmp printed %q, want the absolute path of the view", r.stdout)
			}
			unmountOnCleanup(t, dir)
			if !isMounted(dir) {
				t.Fatalf("mount --tmp returned before %s was mounted", dir)
			}
			if m := s.mounts(); len(m) != 1 || m[0].Target != dir || m[0].Driver != driver {
				t.Fatalf("mount table: %+v", m)
			}
			if data, err := os.ReadFile(filepath.Join(dir, "etc/hostname")); err != nil || string(data) != "layerfs-demo-v2\n" {
				t.Fatalf("tmp view: %q %v", data, err)
			}
			must(t, os.WriteFile(filepath.Join(dir, "scratch"), []byte("x"), 0o644))
			s.ok(nil, "umount", dir)
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Fatalf("umount left the tmp dir: %v", err)
			}
			if out := s.ok(nil, "views", "--json").stdout; strings.TrimSpace(out) != "[]" {
				t.Fatalf("umount left the tmp view: %s", out)
			}
			if m := s.mounts(); len(m) != 0 {
				t.Fatalf("umount left the mount table entry: %+v", m)
			}
		})
	}
	// SIGTERM to the daemon unmounts and forgets the mount.
	mnt := s.mountView("demo:1", "fuse")
	must(t, unix.Kill(s.mounts()[0].PID, unix.SIGTERM))
	deadline := time.Now().Add(5 * time.Second)
	for (isMounted(mnt) || len(s.mounts()) > 0) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if isMounted(mnt) || len(s.mounts()) > 0 {
		t.Fatal("SIGTERM did not unmount cleanly")
	}
}

func TestUmountBusyAndLazy(t *testing.T) {
	for _, driver := range []string{"kernel", "fuse"} {
		t.Run(driver, func(t *testing.T) {
			if driver == "kernel" {
				testutil.NeedRootOnly(t, "kernel overlayfs outside a user namespace")
			}
			s := storeWithSample(t)
			mnt := s.mountView("demo:1", driver)
			f, err := os.Open(filepath.Join(mnt, "etc/hostname"))
			must(t, err)
			s.fails(nil, []string{"umount", mnt}, "busy", "--lazy")
			s.ok(nil, "umount", "--lazy", mnt)
			f.Close()
			if isMounted(mnt) {
				t.Fatal("lazy umount left the mount")
			}
		})
	}
}

func TestLayersUsedByViewsAndMountsCannotBeRemoved(t *testing.T) {
	s := storeWithSample(t)
	var img struct {
		Layers []string `json:"layers"`
	}
	must(t, json.Unmarshal([]byte(s.ok(nil, "inspect", "demo:1").stdout), &img))
	top := img.Layers[len(img.Layers)-1]
	s.ok(nil, "rmi", "demo:1")
	view := s.ok(nil, "create", top).lastLine()
	s.fails(nil, []string{"rm", top}, "in use", "view")
	s.ok(nil, "rm-view", view)
	mnt := s.mountView(top, "fuse", "--ro")
	s.fails(nil, []string{"rm", top}, "in use", "mount "+mnt)
	if err := os.WriteFile(filepath.Join(mnt, "x"), nil, 0o644); err == nil {
		t.Fatal("a --ro mount took a write")
	}
	s.ok(nil, "umount", mnt)
	s.ok(nil, "rm", top)
}

// storeWithHardlinks imports links:1, whose lower layer holds the hardlink
// group {data/a, data/b, other/c}, a plain directory ren and the group
// {hl/x, hl/y} in a directory of its own.
func storeWithHardlinks(t *testing.T) *store {
	t.Helper()
	s := newStore(t)
	lower, err := imagegen.Tar([]imagegen.Entry{
		{Name: "data/", Type: tar.TypeDir},
		{Name: "data/a", Type: tar.TypeReg, Content: []byte("data\n")},
		{Name: "data/b", Type: tar.TypeLink, Linkname: "data/a"},
		{Name: "other/", Type: tar.TypeDir},
		{Name: "other/c", Type: tar.TypeLink, Linkname: "data/a"},
		{Name: "ren/", Type: tar.TypeDir},
		{Name: "ren/plain", Type: tar.TypeReg, Content: []byte("plain\n")},
		{Name: "hl/", Type: tar.TypeDir},
		{Name: "hl/x", Type: tar.TypeReg, Content: []byte("x\n")},
		{Name: "hl/y", Type: tar.TypeLink, Linkname: "hl/x"},
	})
	must(t, err)
	top, err := imagegen.Tar([]imagegen.Entry{{Name: "etc/", Type: tar.TypeDir}, {Name: "etc/marker", Type: tar.TypeReg, Content: []byte("top\n")}})
	must(t, err)
	dir := filepath.Join(t.TempDir(), "image")
	_, err = imagegen.WriteOCILayout(dir, [][]byte{lower, top}, compression.Gzip, "links:1")
	must(t, err)
	s.ok(nil, "import-image", dir)
	return s
}

func appendFile(t *testing.T, p, data string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.WriteString(data)
	must(t, err)
	must(t, f.Close())
}

// sameInode checks that names under root show content and one inode
// whose st_nlink counts them, and returns that inode number.
func sameInode(t *testing.T, what, root, content string, names ...string) uint64 {
	t.Helper()
	var ino uint64
	for i, n := range names {
		var st unix.Stat_t
		must(t, unix.Lstat(filepath.Join(root, n), &st))
		if data, _ := os.ReadFile(filepath.Join(root, n)); string(data) != content {
			t.Errorf("%s: %s holds %q, want %q", what, n, data, content)
		}
		if int(st.Nlink) != len(names) {
			t.Errorf("%s: %s has st_nlink %d, want %d", what, n, st.Nlink, len(names))
		}
		if i == 0 {
			ino = st.Ino
		} else if st.Ino != ino {
			t.Errorf("%s: %s has st_ino %d, %s %d", what, n, st.Ino, names[0], ino)
		}
	}
	return ino
}

// The kernel driver mounts views with redirect_dir=on and index=on: a lower
// directory can be renamed and a lower hardlink group stays one inode when
// one name is written. The same view then mounts with the other driver and
// shows the same tree, and a commit keeps the group whole.
func TestHardlinksAndRenamesAcrossDrivers(t *testing.T) {
	for _, order := range [][2]string{{"kernel", "fuse"}, {"fuse", "kernel"}, {"kernel", "kernel"}} {
		t.Run(order[0]+"-then-"+order[1], func(t *testing.T) {
			testutil.NeedRootOnly(t, "kernel overlayfs outside a user namespace")
			s := storeWithHardlinks(t)
			view := s.ok(nil, "create", "--name", "links", "links:1").lastLine()
			mnt := s.mountView("links", order[0])
			if order[0] == "kernel" {
				var m []struct {
					KernelOptions []string `json:"kernelOptions"`
					Dropped       []string `json:"dropped"`
				}
				must(t, json.Unmarshal([]byte(s.ok(nil, "mounts", "--json").stdout), &m))
				if len(m) != 1 || !slices.Contains(m[0].KernelOptions, "index=on") || !slices.Contains(m[0].KernelOptions, "redirect_dir=on") {
					t.Fatalf("kernel view mount options %+v, want index=on and redirect_dir=on", m)
				}
			}
			appendFile(t, filepath.Join(mnt, "data/a"), "new\n")
			must(t, os.Rename(filepath.Join(mnt, "ren"), filepath.Join(mnt, "ren2")))
			// A group written through a directory renamed by the same
			// driver: under the kernel, the union finds the other name
			// through the kernel's index and redirect; under the union,
			// the kernel finds every name linked to the copy in the
			// upper (or, for a group the union must copy up through its
			// own index, in the kernel's index, which the union writes
			// too: fusefs TestKernelReadsUnionIndex).
			must(t, os.Rename(filepath.Join(mnt, "hl"), filepath.Join(mnt, "hl2")))
			appendFile(t, filepath.Join(mnt, "hl2/x"), "more\n")
			group := []string{"data/a", "data/b", "other/c"}
			ino := sameInode(t, order[0], mnt, "data\nnew\n", group...)
			before := snapshot(t, mnt)
			if before["ren2/plain"] == "" || before["ren"] != "" {
				t.Fatalf("lower directory rename under %s: %v", order[0], before)
			}
			if order[0] == "kernel" {
				// A plain umount(8), not layerfs umount (which links the
				// indexed names into the upper at once): the union must
				// read the kernel's index itself.
				must(t, unix.Unmount(mnt, 0))
			} else {
				s.ok(nil, "umount", mnt)
			}

			again := s.mountView(view[:12], order[1])
			sameTree(t, order[0]+" then "+order[1], before, snapshot(t, again))
			if got := sameInode(t, order[1], again, "data\nnew\n", group...); order[1] == "fuse" && got != ino {
				// The union shows the lower's inode number for an indexed
				// group, as the kernel does.
				t.Errorf("st_ino %d under the union, %d under the kernel", got, ino)
			}
			sameInode(t, order[1], again, "x\nmore\n", "hl2/x", "hl2/y")
			s.ok(nil, "umount", again)

			// The commit reads the upper alone: every name of the group
			// must be there, as one inode.
			s.ok(nil, "commit", "links")
			committed := s.mountView("links", "fuse")
			sameInode(t, "after commit", committed, "data\nnew\n", group...)
			sameInode(t, "after commit", committed, "x\nmore\n", "hl2/x", "hl2/y")
			s.ok(nil, "umount", committed)
		})
	}
}

// A view the kernel driver has mounted right now can be diffed and
// committed with --keep: the names of a lower hardlink group that only the
// kernel's index serves (the kernel links into the upper only the name the
// write came through) are in the diff and in the layer, as hardlinks of the
// copied-up name with its new data, and nothing is written into the upper
// or the work dir of the live mount.
func TestCommitKeepOfKernelMountedView(t *testing.T) {
	s, view, mnt := kernelIndexedView(t)
	viewDir := filepath.Join(s.root, "views", view)
	if _, err := os.Lstat(filepath.Join(viewDir, "upper/data/b")); err == nil {
		t.Fatal("the kernel linked data/b into the upper: nothing for the commit to add")
	}
	upper, work := filepath.Join(viewDir, "upper"), filepath.Join(viewDir, "work")
	before := dirState(t, upper, work)

	diff := strings.Split(strings.TrimSpace(s.ok(nil, "diff", "links").stdout), "\n")
	for _, want := range []string{"C /data/a", "C /data/b", "C /other", "C /other/c"} {
		if !slices.Contains(diff, want) {
			t.Errorf("diff of the mounted view lacks %q: %q", want, diff)
		}
	}
	layer := s.ok(nil, "commit", "--keep", "links").lastLine()
	sameTree(t, "upper and work of the live mount", before, dirState(t, upper, work))

	got, contents := layerEntries(t, s.ok(nil, "export", layer).stdout)
	if a, data := got["data/a"], contents["data/a"]; a == nil || a.Typeflag != tar.TypeReg || data != "data\nnew\n" {
		t.Fatalf("layer: data/a %+v holds %q, want a file with the new data", a, data)
	}
	for _, n := range []string{"data/b", "other/c"} {
		if h := got[n]; h == nil || h.Typeflag != tar.TypeLink || h.Linkname != "data/a" {
			t.Errorf("layer: %s is %+v, want a hardlink to data/a", n, h)
		}
	}
	if got["other/"] == nil {
		t.Error("layer lacks other/, the directory of other/c")
	}
	// The mount goes on serving the group.
	sameInode(t, "kernel after commit --keep", mnt, "data\nnew\n", "data/a", "data/b", "other/c")
}

// kernelIndexedView makes view "links" of storeWithHardlinks, mounts it
// with the kernel driver (index=on, or the test is skipped) and appends
// "new\n" to data/a through it: the kernel copies the group up into its
// index and links only data/a into the upper.
func kernelIndexedView(t *testing.T) (s *store, view, mnt string) {
	t.Helper()
	testutil.NeedRootOnly(t, "kernel overlayfs with index=on outside a user namespace")
	s = storeWithHardlinks(t)
	view = s.ok(nil, "create", "--name", "links", "links:1").lastLine()
	mnt = s.mountView("links", "kernel")
	var m []struct {
		KernelOptions []string `json:"kernelOptions"`
	}
	must(t, json.Unmarshal([]byte(s.ok(nil, "mounts", "--json").stdout), &m))
	testutil.Need(t, len(m) == 1 && slices.Contains(m[0].KernelOptions, "index=on"), "kernel overlayfs with index=on")
	appendFile(t, filepath.Join(mnt, "data/a"), "new\n")
	return s, view, mnt
}

// dirState describes every object under the roots for a check that
// nothing changed them: type, inode, link count, size, ctime and xattrs.
func dirState(t *testing.T, roots ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, root := range roots {
		dirStateOf(t, root, out)
	}
	return out
}

func dirStateOf(t *testing.T, root string, out map[string]string) {
	t.Helper()
	must(t, filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode=%o ino=%d nlink=%d size=%d ctime=%d.%09d", st.Mode, st.Ino, st.Nlink, st.Size, st.Ctim.Sec, st.Ctim.Nsec)
		buf := make([]byte, 64<<10)
		if n, err := unix.Llistxattr(p, buf); err == nil {
			for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
				if name == "" {
					continue
				}
				v := make([]byte, 64<<10)
				vn, _ := unix.Lgetxattr(p, name, v)
				desc += fmt.Sprintf(" %s=%x", name, v[:max(vn, 0)])
			}
		}
		out[p] = desc
		return nil
	}))
}

// TestReadOnlyUnionAfterKernelMount: a read-only union view reads no work
// dir, so the names a kernel mount served from its index (here: the
// kernel mount went away behind the store's back, with no layerfs umount
// to settle the view) must be linked into the upper before it mounts.
func TestReadOnlyUnionAfterKernelMount(t *testing.T) {
	s, _, kmnt := kernelIndexedView(t)
	must(t, unix.Unmount(kmnt, 0))

	rmnt := s.mountView("links", "fuse", "--ro")
	for _, n := range []string{"data/a", "data/b", "other/c"} {
		b, err := os.ReadFile(filepath.Join(rmnt, n))
		if err != nil || string(b) != "data\nnew\n" {
			t.Errorf("read-only union: %s holds %q, %v; want the data written through the kernel mount", n, b, err)
		}
	}
}
