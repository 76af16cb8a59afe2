package e2e

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	fuseconf "github.com/layerfs/layerfs/doctor"
	"github.com/layerfs/layerfs/internal/testutil"
)

// TestPlainUserViewIsTheirs is the rule for a plain user's views: a view
// of a root-owned image shows root's owners and modes (ls -ln) and is the
// user's to change throughout; nobody else may enter it, root included;
// it is nosuid,nodev. With --allow-other (refused, naming
// user_allow_other, unless /etc/fuse.conf allows it) everyone, the mounter
// too, is held to the owners and modes it shows.
func TestPlainUserViewIsTheirs(t *testing.T) {
	testutil.NeedTool(t, "fusermount3")
	u := newPlainUser(t)
	store := filepath.Join(u.home, "store")
	u.layerfs(store, "import-image", "--name", "demo:1", u.sampleLayout())
	u.layerfs(store, "create", "--name", "mine", "demo:1")
	mnt := u.mount(store, "mine", "mnt", "--driver", "fuse")
	mo, so := mountOptions(t, mnt)
	if !slices.Contains(mo, "nosuid") || !slices.Contains(mo, "nodev") {
		t.Errorf("a plain user's view is mounted %v, want nosuid,nodev", mo)
	}
	if slices.Contains(so, "default_permissions") {
		t.Errorf("mounted with %v: the kernel would hold the mounter to the owners the view shows", so)
	}
	got := u.sh(`cd "$M"
stat -c '%u:%g:%a' etc/hostname home/user home/user/notes.txt
test -w etc/hostname && echo writable
test -x etc/hostname || echo not-executable
echo changed > etc/hostname
cat etc/hostname home/user/notes.txt
echo mine > home/user/new
chmod 600 etc/hostname
rm bin/tool-alias
chmod 750 usr/bin/ping
stat -c '%u:%g:%a' etc/hostname home/user/new`, "M="+mnt)
	want := "0:0:644\n1000:1000:700\n1000:1000:644\nwritable\nnot-executable\nchanged\nowned by 1000\n" +
		"0:0:600\n" + strconv.Itoa(u.uid()) + ":" + strconv.Itoa(u.uid()) + ":644\n"
	if got != want {
		t.Errorf("as the mounter in a view of a root-owned image:\n%s\nwant:\n%s", got, want)
	}
	if os.Geteuid() == 0 {
		// FUSE without allow_other answers nobody but the mounter.
		if _, err := os.Stat(filepath.Join(mnt, "etc")); !errors.Is(err, os.ErrPermission) {
			t.Errorf("root entered another user's view: %v", err)
		}
		other := &plainUser{t: t, cred: &syscall.Credential{Uid: 1, Gid: 1}, home: u.home}
		if r := other.run("cat", filepath.Join(mnt, "etc/hostname")); r.err == nil {
			t.Errorf("uid 1 read uid %d's view: %q", u.uid(), r.stdout)
		}
	}
	u.layerfs(store, "umount", mnt)
	// The commit has the changes as root's, and ping's file capability
	// (kept in a user.* xattr by the plain user's store) as the real one.
	layer := u.layerfs(store, "commit", "mine").lastLine()
	committed, _ := layerEntries(t, u.layerfs(store, "export", layer).stdout)
	if h := committed["etc/hostname"]; h == nil || h.Uid != 0 || h.Mode != 0o600 {
		t.Errorf("committed etc/hostname: %+v, want root's with mode 0600", h)
	}
	if h := committed["usr/bin/ping"]; h == nil || h.Mode != 0o750 ||
		h.PAXRecords["SCHILY.xattr.security.capability"] != "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" {
		t.Errorf("committed usr/bin/ping: %+v, want mode 0750 and the image's security.capability", h)
	}
	for name, h := range committed {
		for k := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.user.containers.") {
				t.Errorf("the commit leaks the store's record %s on %s", k, name)
			}
		}
	}

	shared := u.dir("shared")
	unmountOnCleanup(t, shared)
	if !fuseConfAllowsOther() {
		r := u.run(binPath, "--store", store, "mount", "--driver", "fuse", "--allow-other", "demo:1", shared)
		if r.err == nil || !strings.Contains(r.stderr, "user_allow_other") || !strings.Contains(r.stderr, "/etc/fuse.conf") {
			t.Fatalf("mount --allow-other without user_allow_other: %v, stderr %q; want a refusal naming user_allow_other in /etc/fuse.conf", r.err, r.stderr)
		}
		if isMounted(shared) {
			t.Fatal("a refused --allow-other mounted anyway")
		}
	}
	if os.Geteuid() != 0 {
		return // sharing takes a second user
	}
	allowOtherUsers(t)
	shared = u.mount(store, "demo:1", "shared", "--driver", "fuse", "--allow-other")
	if _, so := mountOptions(t, shared); !slices.Contains(so, "default_permissions") {
		t.Errorf("--allow-other mounted with %v, want default_permissions", so)
	}
	if data, err := os.ReadFile(filepath.Join(shared, "etc/hostname")); err != nil || string(data) != "layerfs-demo-v2\n" {
		t.Errorf("root reads a shared view: %q %v", data, err)
	}
	other := &plainUser{t: t, cred: &syscall.Credential{Uid: 1, Gid: 1}, home: u.home}
	if r := other.run("cat", filepath.Join(shared, "etc/hostname")); r.err != nil {
		t.Errorf("uid 1 cannot read a 0644 file of a shared view: %v %s", r.err, r.stderr)
	}
	for _, who := range []*plainUser{other, u} {
		if r := who.run("sh", "-c", "echo x >> "+filepath.Join(shared, "etc/hostname")); r.err == nil {
			t.Errorf("uid %d wrote root's 0644 etc/hostname in a shared view", who.uid())
		}
	}
	if r := other.run("cat", filepath.Join(shared, "home/user/notes.txt")); r.err == nil {
		t.Error("uid 1 read into uid 1000's 0700 home/user in a shared view")
	}
	u.layerfs(store, "umount", shared)
}

func fuseConfAllowsOther() bool {
	data, _ := os.ReadFile("/etc/fuse.conf")
	return fuseconf.FuseConfAllowsOther(string(data))
}

// allowOtherUsers adds user_allow_other to /etc/fuse.conf for the test.
func allowOtherUsers(t *testing.T) {
	t.Helper()
	if fuseConfAllowsOther() {
		return
	}
	orig, err := os.ReadFile("/etc/fuse.conf")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if orig == nil {
			os.Remove("/etc/fuse.conf")
			return
		}
		if err := os.WriteFile("/etc/fuse.conf", orig, 0o644); err != nil {
			t.Errorf("restore /etc/fuse.conf: %v", err)
		}
	})
	add := append(bytes.TrimRight(orig, "\n"), []byte("\nuser_allow_other # layerfs e2e test, removed when it ends\n")...)
	must(t, os.WriteFile("/etc/fuse.conf", add, 0o644))
}

// TestDeviceNodeInPlainUsersLayer: a plain user cannot make device nodes,
// yet importing a layer that holds them works: the store keeps them as
// records, the view shows them, and (nosuid,nodev) does not open them, as
// doctor says.
func TestDeviceNodeInPlainUsersLayer(t *testing.T) {
	testutil.NeedTool(t, "fusermount3")
	u := newPlainUser(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
		{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o660, Gid: 6, Devmajor: 8},
	} {
		must(t, tw.WriteHeader(h))
	}
	must(t, tw.Close())
	layer := filepath.Join(u.dir("in"), "dev.tar")
	must(t, os.WriteFile(layer, buf.Bytes(), 0o644))
	store := filepath.Join(u.home, "store")
	id := u.layerfs(store, "import", layer).lastLine()
	if got := sha256hex([]byte(u.layerfs(store, "export", id).stdout)); got != sha256hex(buf.Bytes()) {
		t.Fatal("export of a layer with device nodes is not the imported tar")
	}
	mnt := u.mount(store, id, "mnt", "--driver", "fuse", "--ro")
	got := u.sh(`cd "$M"; stat -c '%F %t:%T %u:%g %a' dev/null dev/sda; head -c1 dev/null 2>&1 || echo refused`, "M="+mnt)
	want := "character special file 1:3 0:0 666\nblock special file 8:0 0:6 660\n"
	if !strings.HasPrefix(got, want) || !strings.Contains(got, "Permission denied") || !strings.HasSuffix(got, "refused\n") {
		t.Errorf("device nodes in a plain user's view:\n%s\nwant:\n%s(then opening dev/null refused: Permission denied)", got, want)
	}
	doc := u.run(binPath, "--store", filepath.Join(u.home, "no-store"), "doctor")
	if !strings.Contains(doc.stdout, "device nodes do not open") {
		t.Errorf("doctor does not say a plain user's device nodes do not open:\n%s", doc.stdout)
	}
	u.layerfs(store, "umount", mnt)
}

// TestRootlessErrorsExplained: what stands in a plain user's way is named,
// with what to do: no access to /dev/fuse, no fusermount3, a mount point
// that is not theirs, a store on a filesystem without xattrs. The root
// pass makes each situation in a private mount namespace.
func TestRootlessErrorsExplained(t *testing.T) {
	testutil.NeedRootOnly(t, "makes each situation as root (bind mounts over /dev/fuse and fusermount3, a ramfs, a root-owned sticky mount point) for a plain user")
	testutil.NeedTool(t, "fusermount3")
	testutil.NeedTool(t, "setpriv")
	testutil.NeedTool(t, "unshare")
	u := newPlainUser(t)
	layout := u.sampleLayout()
	store := filepath.Join(u.home, "store")
	u.layerfs(store, "import-image", "--name", "demo:1", layout)
	for _, tc := range []struct {
		name  string
		setup string // as root, in a private mount namespace
		user  string // then as the plain user
		want  []string
	}{
		{"no access to /dev/fuse",
			`touch "$D/closed"; chmod 600 "$D/closed"; mount --bind "$D/closed" /dev/fuse`,
			`"$L" --store "$S" mount --driver fuse demo:1 "$M"`,
			[]string{"/dev/fuse cannot be opened read-write", "chmod 0666 /dev/fuse"}},
		{"no fusermount3",
			`mount --bind /dev/null "$(readlink -f "$(command -v fusermount3)")"`,
			`"$L" --store "$S" mount --driver fuse demo:1 "$M"`,
			[]string{"fusermount3 is not on PATH", "install fuse3"}},
		{"mount point not owned",
			`mkdir -p "$D/sticky"; chmod 1777 "$D/sticky"`,
			`"$L" --store "$S" mount --driver fuse demo:1 "$D/sticky"`,
			[]string{"not owned by you", "sticky"}},
		{"store without xattr support",
			`mkdir -p "$D/ramfs"; mount -t ramfs none "$D/ramfs"; chmod 0777 "$D/ramfs"`,
			`"$L" --store "$D/ramfs/store" import-image --name demo:1 "$I"`,
			[]string{"does not support extended attributes", "user.containers.override_stat", "layerfs doctor"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			must(t, os.Chmod(filepath.Dir(d), 0o755))
			must(t, os.Chmod(d, 0o755))
			mnt := u.dir("mnt-" + strings.ReplaceAll(tc.name, " ", "-"))
			unmountOnCleanup(t, mnt)
			cmd := exec.Command("unshare", "-m", "sh", "-ec",
				`eval "$SETUP"; exec setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c "$USER_SCRIPT"`)
			cmd.Env = append(os.Environ(), "SETUP="+tc.setup, "USER_SCRIPT="+tc.user, "HOME="+u.home,
				"D="+d, "L="+binPath, "S="+store, "M="+mnt, "I="+layout)
			cmd.Dir = u.home
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			if err == nil {
				t.Fatalf("succeeded, want a failure explained:\n%s%s", out.String(), errb.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(errb.String(), w) {
					t.Errorf("the error does not say %q:\n%s", w, errb.String())
				}
			}
		})
	}
}

// TestPlainUserCannotEmptyAReadOnlyFile: a plain user's union has no
// default_permissions, so the daemon's own rights decide. Truncating a
// read-only file of the user's must fail and leave its data: the copy-up
// for a truncate to 0 copies no data, and that empty copy must not stay
// when the truncate then fails.
func TestPlainUserCannotEmptyAReadOnlyFile(t *testing.T) {
	u := newPlainUser(t)
	lower, upper, work, mnt := u.dir("lower"), u.dir("upper"), u.dir("work"), u.dir("mnt")
	// One file per try: a failed try leaves a full copy-up behind.
	u.sh(`for f in ro0 ro1 ro2; do printf data > lower/$f && chmod 0444 lower/$f; done; printf data > lower/rw`)
	unmountOnCleanup(t, mnt)
	if r := u.run(overlayBinary(), "-o", "lowerdir="+lower+",upperdir="+upper+",workdir="+work, mnt); r.err != nil {
		t.Fatalf("layerfs-overlay as uid %d: %v\n%s", u.uid(), r.err, r.stderr)
	}
	helper := testutil.SharedTestBinary(t)
	for i, try := range []string{
		`"$HELPER" "$F" 0`, // truncate(2) by path
		`: > "$F"`,         // open with O_TRUNC
		`truncate -s 0 "$F"`,
	} {
		f := fmt.Sprintf("mnt/ro%d", i)
		cmd := u.command("sh", "-c", try)
		cmd.Env = append(cmd.Env, "HELPER="+helper, helperEnv+"=truncate", "F="+f)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("%s on a 0444 file of the user's succeeded: %s", try, out)
		}
		if got := u.sh(`cat ` + f); got != "data" {
			t.Errorf("after %s: the read-only file reads %q, want %q", try, got, "data")
		}
	}
	if got := u.sh(`: > mnt/rw && cat mnt/rw`); got != "" {
		t.Errorf("a writable file after : > reads %q, want it empty", got)
	}
}
