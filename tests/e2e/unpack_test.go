package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

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

// TestPlainUserViewMatchesUmociUnpack: a real multi-layer image imported
// and mounted by a plain user shows the tree `umoci unpack` makes as
// root, owners and modes included. The reference is root's unpack in the
// root pass; in the rootless pass it is the unpack of the root of a user
// namespace with a full subordinate range (the ids 0-65535 of the image
// are real there), the closest a plain user comes to root.
func TestPlainUserViewMatchesUmociUnpack(t *testing.T) {
	testutil.NeedTool(t, "umoci")
	testutil.NeedTool(t, "fusermount3")
	testutil.NeedTool(t, "getfattr")
	u := newPlainUser(t)
	layout := u.sampleLayout()
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
		if got != want && !ownerNotKept(got, want, u.uid(), u.gid()) {
			t.Errorf("%s: view %q, umoci unpack %q", name, got, want)
		}
	}
	for name := range view {
		if _, ok := ref[name]; !ok {
			t.Errorf("%s: in the view, not in umoci's unpack", name)
		}
	}
}

// ownerNotKept accepts the one difference a plain user's store cannot
// avoid: Linux refuses user.* xattrs on symlinks and FIFOs, so their
// owner is not recorded and the view shows the user's own.
func ownerNotKept(got, want string, uid, gid int) bool {
	g, w := strings.Split(got, "|"), strings.Split(want, "|")
	if len(g) != 6 || len(w) != 6 || (g[0] != "l" && g[0] != "p") {
		return false
	}
	mine := strconv.Itoa(uid) + ":" + strconv.Itoa(gid)
	if g[2] != mine {
		return false
	}
	g[2] = w[2]
	return strings.Join(g, "|") == want
}
