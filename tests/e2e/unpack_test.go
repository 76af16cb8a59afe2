package e2e

import (
	"archive/tar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/internal/imagegen"
	"github.com/layerfs/layerfs/internal/testutil"
)

// treeScript lists the tree under $T, one line per object (name, type,
// mode with set-id and sticky bits, owner, links, size, link target),
// then the sha256 of every regular file.
const treeScript = `cd "$T"
find . -mindepth 1 -printf '%P|%y|%m|%U:%G|%n|%s|%l\n' | LC_ALL=C sort
find . -type f -exec sha256sum {} + | sed 's| \./| |' | LC_ALL=C sort -k2`

// treeLines parses treeScript's output into name -> description, leaving
// out what differs between any two filesystems for directories (size,
// link count: a union reports 1 for a merged directory, as overlayfs
// does).
func treeLines(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Split(line, "|"); len(f) == 7 {
			if f[1] == "d" {
				f[4], f[5] = "-", "-"
			}
			m[f[0]] = strings.Join(f[1:], "|")
		} else if sum, name, ok := strings.Cut(line, "  "); ok {
			m[name+" sha256"] = sum
		}
	}
	return m
}

// specialsLayer is a fourth layer for the sample image: symlinks and
// FIFOs (which Linux refuses user.* xattrs) owned by 1000 and 65534, FIFOs
// with setgid and sticky bits, a hardlink to a FIFO.
func specialsLayer(t *testing.T) []byte {
	t.Helper()
	data, err := imagegen.Tar([]imagegen.Entry{
		{Name: "opt/", Type: tar.TypeDir},
		{Name: "opt/link-1000", Type: tar.TypeSymlink, Linkname: "../etc/hostname", Mode: 0o777, UID: 1000, GID: 1000},
		{Name: "opt/link-nobody", Type: tar.TypeSymlink, Linkname: "missing", Mode: 0o777, UID: 65534, GID: 65534},
		{Name: "opt/fifo-1000", Type: tar.TypeFifo, Mode: 0o2640, UID: 1000, GID: 1000},
		{Name: "opt/fifo-nobody", Type: tar.TypeFifo, Mode: 0o1666, UID: 65534, GID: 65534},
		{Name: "opt/fifo-alias", Type: tar.TypeLink, Linkname: "opt/fifo-1000"},
	})
	must(t, err)
	return data
}

// specialsLayout writes the sample image with specialsLayer on top as an
// OCI layout the user can read, tagged v1.
func (u *plainUser) specialsLayout() string {
	u.t.Helper()
	layers, err := imagegen.SampleLayers()
	must(u.t, err)
	dir := filepath.Join(u.home, "image")
	_, err = imagegen.WriteOCILayout(dir, append(layers, specialsLayer(u.t)), compression.Gzip, "v1")
	must(u.t, err)
	if u.cred != nil {
		must(u.t, filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Chown(p, nobody, nobody)
		}))
	}
	return dir
}

// TestPlainUserViewMatchesUmociUnpack: a real multi-layer image imported
// and mounted by a plain user shows the tree `umoci unpack` makes as
// root, owners and modes included, of every object: symlinks and FIFOs
// too (their records are in the layers' special-owners tables). The
// reference is root's unpack in the root pass; in the rootless pass it
// is the unpack of the root of a user namespace with a full subordinate
// range (the ids 0-65535 of the image are real there), the closest a
// plain user comes to root.
func TestPlainUserViewMatchesUmociUnpack(t *testing.T) {
	testutil.NeedTool(t, "umoci")
	testutil.NeedTool(t, "fusermount3")
	testutil.NeedTool(t, "getfattr")
	u := newPlainUser(t)
	layout := u.specialsLayout()
	store := filepath.Join(u.home, "store")
	u.layerfs(store, "import-image", "--name", "demo:1", layout)
	mnt := u.mount(store, "demo:1", "mnt", "--driver", "fuse", "--ro")
	view := treeLines(u.sh(treeScript, "T="+mnt))
	caps := u.sh(`getfattr --absolute-names -n security.capability -e hex "$T/usr/bin/ping"`, "T="+mnt)
	if !strings.Contains(caps, "security.capability=0x0100000200200000") {
		t.Errorf("usr/bin/ping's file capability is not in the view: %q", caps)
	}
	u.layerfs(store, "umount", mnt)

	bundle := filepath.Join(t.TempDir(), "bundle")
	var ref map[string]string
	if os.Geteuid() == 0 {
		if out, err := exec.Command("umoci", "--log", "error", "unpack", "--image", layout+":v1", bundle).CombinedOutput(); err != nil {
			t.Fatalf("umoci unpack: %v: %s", err, out)
		}
		out, err := exec.Command("sh", "-ec", "T="+filepath.Join(bundle, "rootfs")+"\n"+treeScript).Output()
		must(t, err)
		ref = treeLines(string(out))
	} else {
		nsSubRange.need(t)
		t.Cleanup(func() { nsSubRange.command(`rm -rf "$B"`, "B="+bundle).Run() })
		ref = treeLines(nsSubRange.run(t, `umoci --log error unpack --image "$I:v1" "$B"
T="$B/rootfs"
`+treeScript, "I="+layout, "B="+bundle))
	}
	if len(ref) < 20 {
		t.Fatalf("the reference tree is too small to prove anything: %v", ref)
	}
	t.Logf("compared %d objects and file digests", len(ref))
	for name, want := range ref {
		got, ok := view[name]
		if !ok {
			t.Errorf("%s: in umoci's unpack, not in the view", name)
			continue
		}
		if got != want {
			t.Errorf("%s: view %q, umoci unpack %q", name, got, want)
		}
	}
	for name := range view {
		if _, ok := ref[name]; !ok {
			t.Errorf("%s: in the view, not in umoci's unpack", name)
		}
	}
	for _, name := range []string{"bin/sh", "run/initctl", "opt/link-1000", "opt/fifo-nobody"} {
		if _, ok := ref[name]; !ok {
			t.Errorf("%s is not in the comparison", name)
		}
	}
}

// TestPlainUserCommitKeepsSpecialOwners: a plain user's view of an image
// whose symlinks and FIFOs belong to root, 1000 and 65534 commits them with
// those owners: moved (copied up), touched, chowned through the view
// (the daemon cannot chown: the record changes) and new ones alike; the
// committed layer shows them again.
func TestPlainUserCommitKeepsSpecialOwners(t *testing.T) {
	testutil.NeedTool(t, "fusermount3")
	u := newPlainUser(t)
	store := filepath.Join(u.home, "store")
	u.layerfs(store, "import-image", "--name", "demo:1", u.specialsLayout())
	u.layerfs(store, "create", "--name", "mine", "demo:1")
	mnt := u.mount(store, "mine", "mnt", "--driver", "fuse")
	got := u.sh(`cd "$M"
mv bin/sh bin/sh.moved
touch -h opt/link-1000
chown -h 0:0 opt/link-nobody
ln -s somewhere opt/new-link
chown -h 123:456 opt/new-link
mkfifo opt/new-fifo
chown 77:88 opt/new-fifo
chmod 1640 opt/new-fifo
stat -c '%n %u:%g %a' bin/sh.moved opt/link-1000 opt/link-nobody opt/new-link opt/new-fifo opt/fifo-nobody`, "M="+mnt)
	want := "bin/sh.moved 0:0 777\nopt/link-1000 1000:1000 777\nopt/link-nobody 0:0 777\nopt/new-link 123:456 777\n" +
		"opt/new-fifo 77:88 1640\nopt/fifo-nobody 65534:65534 1666\n"
	if got != want {
		t.Errorf("in the view:\n%s\nwant:\n%s", got, want)
	}
	u.layerfs(store, "umount", mnt)
	layer := u.layerfs(store, "commit", "mine").lastLine()
	committed, _ := layerEntries(t, u.layerfs(store, "export", layer).stdout)
	for _, tc := range []struct {
		name     string
		typ      byte
		uid, gid int
		mode     int64
	}{
		{"bin/sh.moved", tar.TypeSymlink, 0, 0, 0o777},
		{"opt/link-1000", tar.TypeSymlink, 1000, 1000, 0o777},
		{"opt/link-nobody", tar.TypeSymlink, 0, 0, 0o777},
		{"opt/new-link", tar.TypeSymlink, 123, 456, 0o777},
		{"opt/new-fifo", tar.TypeFifo, 77, 88, 0o1640},
	} {
		h := committed[tc.name]
		if h == nil || h.Typeflag != tc.typ || h.Uid != tc.uid || h.Gid != tc.gid || h.Mode != tc.mode {
			t.Errorf("committed %s: %+v, want type %c %d:%d %#o", tc.name, h, tc.typ, tc.uid, tc.gid, tc.mode)
		}
	}
	if committed["bin/.wh.sh"] == nil {
		t.Errorf("the commit has no whiteout for the moved bin/sh")
	}
	// The view sits on the committed layer now: its table shows them.
	mnt = u.mount(store, "mine", "mnt2", "--driver", "fuse", "--ro")
	if got := u.sh(`cd "$M"
stat -c '%n %u:%g %a' bin/sh.moved opt/link-1000 opt/link-nobody opt/new-link opt/new-fifo opt/fifo-nobody`, "M="+mnt); got != want {
		t.Errorf("a view of the committed layer:\n%s\nwant:\n%s", got, want)
	}
	u.layerfs(store, "umount", mnt)
}
