package fusefs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

func TestACLCreateMasq(t *testing.T) {
	acl := func(es ...aclEntry) []aclEntry { return es }
	for _, tc := range []struct {
		name      string
		in        []aclEntry
		mode      uint32
		wantMode  uint32
		wantEquiv bool
		wantPerms []uint16
	}{
		{"base entries only", acl(aclEntry{aclUserObj, 7, 0}, aclEntry{aclGroupObj, 5, 0}, aclEntry{aclOther, 5, 0}),
			0o666, 0o644, true, []uint16{6, 4, 4}},
		{"mask limits the group bits", acl(aclEntry{aclUserObj, 7, 0}, aclEntry{aclUser, 7, 1234}, aclEntry{aclGroupObj, 5, 0}, aclEntry{aclMask, 7, 0}, aclEntry{aclOther, 0, 0}),
			0o640, 0o640, false, []uint16{6, 7, 5, 4, 0}},
		{"set-id bits kept", acl(aclEntry{aclUserObj, 7, 0}, aclEntry{aclGroupObj, 7, 0}, aclEntry{aclOther, 0, 0}),
			0o2777, 0o2770, true, []uint16{7, 7, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ents, ok := parseACL(formatACL(tc.in))
			if !ok || !reflect.DeepEqual(ents, tc.in) {
				t.Fatalf("round trip: %v %v", ents, ok)
			}
			mode, equiv := aclCreateMasq(ents, tc.mode)
			if mode != tc.wantMode || equiv != tc.wantEquiv {
				t.Errorf("mode %o equiv %v, want %o %v", mode, equiv, tc.wantMode, tc.wantEquiv)
			}
			var perms []uint16
			for _, e := range ents {
				perms = append(perms, e.perm)
			}
			if !reflect.DeepEqual(perms, tc.wantPerms) {
				t.Errorf("perms %v, want %v", perms, tc.wantPerms)
			}
		})
	}
	if _, ok := parseACL([]byte{1, 0, 0, 0}); ok {
		t.Error("version 1 parsed")
	}
}

// aclUser is the unprivileged user the ACL test grants and denies.
const aclTestUID = 4321

// TestPosixACLAgainstKernelOverlay runs the same ACL scenario on a kernel
// overlay mount and on the union over copies of one lower: ACLs granting
// and denying another user through the view, default ACLs inherited (and
// the umask ignored under them, applied elsewhere), ACLs set through the
// view (copy-up), chmod updating an ACL's mask. Every errno, mode and
// getfacl output must match.
func TestPosixACLAgainstKernelOverlay(t *testing.T) {
	testutil.NeedRootOnly(t, "kernel overlayfs as the oracle, a second user")
	needFuse(t)
	testutil.NeedTool(t, "setfacl")
	testutil.NeedTool(t, "getfacl")
	base := t.TempDir()
	// The other user must reach the mounts.
	for _, d := range []string{filepath.Dir(base), base} {
		os.Chmod(d, 0o755)
	}
	src := filepath.Join(base, "src")
	mustMkdir(t, filepath.Join(src, "shared"))
	mustMkdir(t, filepath.Join(src, "plain"))
	mustWrite(t, filepath.Join(src, "shared/doc"), "doc\n")
	mustWrite(t, filepath.Join(src, "private"), "private\n")
	mustWrite(t, filepath.Join(src, "granted"), "granted\n")
	os.Chmod(filepath.Join(src, "shared"), 0o770)
	os.Chmod(filepath.Join(src, "shared/doc"), 0o640)
	os.Chmod(filepath.Join(src, "private"), 0o600)
	os.Chmod(filepath.Join(src, "granted"), 0o600)
	u := fmt.Sprint(aclTestUID)
	run(t, "setfacl", "-m", "u:"+u+":rwx", filepath.Join(src, "shared"))
	run(t, "setfacl", "-d", "-m", "u::rwx,u:"+u+":rwx,g::r-x,m::rwx,o::---", filepath.Join(src, "shared"))
	run(t, "setfacl", "-m", "u:"+u+":rw-", filepath.Join(src, "shared/doc"))
	run(t, "setfacl", "-m", "u:"+u+":r--", filepath.Join(src, "granted"))

	kl, ul := filepath.Join(base, "kl"), filepath.Join(base, "ul")
	copyTree(t, src, kl)
	copyTree(t, src, ul)
	for _, d := range []string{"kup", "kwork", "kmnt", "uup", "uwork"} {
		mustMkdir(t, filepath.Join(base, d))
	}
	kmnt := filepath.Join(base, "kmnt")
	mountKernelOverlay(t, []string{kl}, filepath.Join(base, "kup"), filepath.Join(base, "kwork"), kmnt)
	umnt := mountT(t, Options{Lowers: []string{ul}, Upper: filepath.Join(base, "uup"), Work: filepath.Join(base, "uwork"), AllowOther: true})

	k, un := aclScenario(t, kmnt), aclScenario(t, umnt)
	if k != un {
		t.Errorf("kernel overlay and union differ:\n--- kernel\n%s\n--- union\n%s", k, un)
	}
	if !strings.Contains(k, "cat granted (as 4321): ok") || !strings.Contains(k, "user:4321:rwx") {
		t.Errorf("the scenario did not exercise ACLs:\n%s", k)
	}
	// What the union wrote holds after a remount.
	umnt2 := mountT(t, Options{Lowers: []string{ul}, Upper: filepath.Join(base, "uup"), Work: filepath.Join(base, "uwork"), ReadOnly: true, AllowOther: true})
	if k, u := getfaclTree(t, kmnt), getfaclTree(t, umnt2); k != u {
		t.Errorf("after a remount the union's ACLs differ:\n--- kernel\n%s\n--- union\n%s", k, u)
	}
}

// aclScenario applies the ACL operations to the view at root and reports
// what each did, then every object's mode and ACL.
func aclScenario(t *testing.T, root string) string {
	var log []string
	as := func(uid int, umask string, desc, script string) {
		cmd := commandIn(root, "sh", "-c", "umask "+umask+"; "+script)
		if uid != 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}}
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		res := "ok"
		if err := cmd.Run(); err != nil {
			res = "failed"
		}
		who := "root"
		if uid != 0 {
			who = fmt.Sprint(uid)
		}
		log = append(log, fmt.Sprintf("%s (as %s): %s", desc, who, res))
	}
	u := aclTestUID
	as(u, "022", "cat granted", "cat granted >/dev/null")
	as(u, "022", "cat private", "cat private >/dev/null")
	as(u, "022", "ls shared", "ls shared >/dev/null")
	as(u, "022", "append shared/doc", "echo more >> shared/doc")
	as(u, "022", "create in shared", "echo new > shared/byuser")
	as(u, "022", "create in plain", "echo new > plain/byuser")
	as(0, "022", "create under a default ACL", "echo x > shared/f022 && mkdir shared/d022 && mkfifo shared/p022 && mkdir shared/d022/inner")
	as(0, "077", "create under a default ACL, umask 077", "echo x > shared/f077 && mkdir shared/d077")
	as(0, "027", "create without a default ACL", "echo x > plain/f027 && mkdir plain/d027")
	as(0, "000", "create without a default ACL, umask 0", "echo x > plain/f000 && mkdir plain/d000")
	as(0, "022", "setfacl on a lower file", "setfacl -m u:"+fmt.Sprint(u)+":rw private")
	as(u, "022", "append private", "echo more >> private")
	as(0, "022", "chmod a file with an ACL", "chmod 0600 shared/doc")
	as(u, "022", "cat shared/doc after chmod", "cat shared/doc >/dev/null")
	as(0, "022", "remove an ACL", "setfacl -b granted")
	as(u, "022", "cat granted after removal", "cat granted >/dev/null")
	as(0, "022", "remove a default ACL", "setfacl -k shared/d077")
	as(0, "022", "create after removal", "echo x > shared/d077/f")
	return strings.Join(log, "\n") + "\n" + getfaclTree(t, root)
}

// getfaclTree renders the mode and ACL of every object under root.
func getfaclTree(t *testing.T, root string) string {
	t.Helper()
	cmd := commandIn(root, "getfacl", "-R", "-p", "-n", ".")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("getfacl in %s: %v\n%s", root, err, out)
	}
	var modes []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			rel, _ := filepath.Rel(root, p)
			var st unix.Stat_t
			unix.Lstat(p, &st)
			modes = append(modes, fmt.Sprintf("%s %o %d:%d", rel, st.Mode, st.Uid, st.Gid))
		}
		return nil
	})
	// One block per object, in the order readdir gave, which no
	// standard fixes: sorted.
	blocks := strings.Split(strings.TrimSpace(string(out)), "\n\n")
	sort.Strings(blocks)
	return strings.Join(modes, "\n") + "\n" + strings.Join(blocks, "\n\n")
}
