package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/statoverride"
)

// A user namespace a plain user can make: unshare's flags for it.
type userns struct {
	name  string
	flags []string
	// full: ids 1-65535 are mapped too (a subordinate range).
	full bool
}

var (
	nsOneID    = userns{"unshare -Urm", []string{"-Urm"}, false}
	nsSubRange = userns{"subordinate range", []string{"--map-root-user", "--map-auto", "-m"}, true}
)

// need skips (fails in CI) where this user cannot make the namespace.
func (ns userns) need(t *testing.T) {
	t.Helper()
	testutil.NeedTool(t, "unshare")
	if ns.full {
		testutil.NeedTool(t, "newuidmap")
		testutil.NeedTool(t, "newgidmap")
	}
	out, err := ns.command("true").CombinedOutput()
	testutil.Need(t, err == nil, fmt.Sprintf("%s: cannot make the user namespace (unprivileged user namespaces, /etc/subuid and /etc/subgid entries, uidmap): %v: %s", ns.name, err, out))
}

func (ns userns) command(script string, env ...string) *exec.Cmd {
	cmd := exec.Command("unshare", append(append([]string{}, ns.flags...), "sh", "-ec", script)...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// run runs script in a new namespace of this kind and fails the test
// unless it succeeds.
func (ns userns) run(t *testing.T, script string, env ...string) string {
	t.Helper()
	cmd := ns.command(script, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: sh -ec %q: %v\nstdout: %s\nstderr: %s", ns.name, script, err, out.String(), errb.String())
	}
	return out.String()
}

// TestUserNamespaceRealOwnersAndKernelDriver is a plain user inside
// `unshare -Urm` and inside a user namespace with a full subordinate range
// (newuidmap/newgidmap, /etc/subuid): an import gives files their real
// owners on disk wherever the namespace maps them (and keeps the image's
// owner in user.containers.override_stat regardless), `mount` (auto)
// picks kernel overlayfs with userxattr, and the kernel's view shows those
// owners.
func TestUserNamespaceRealOwnersAndKernelDriver(t *testing.T) {
	testutil.NeedRootlessPass(t, "a plain user's own user namespaces (root's are not the point)")
	for _, ns := range []userns{nsOneID, nsSubRange} {
		t.Run(ns.name, func(t *testing.T) {
			ns.need(t)
			dir := t.TempDir()
			layout := filepath.Join(dir, "image")
			writeSampleLayout(t, layout)
			store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
			must(t, os.Mkdir(mnt, 0o755))
			t.Cleanup(func() {
				// Whatever the test left, from inside, where the ids are mapped.
				ns.command(`rm -rf "$STORE"`, "STORE="+store).Run()
			})
			out := ns.run(t, `
cat /proc/self/uid_map
echo ---
"$L" --store "$S" import-image --name demo:1 "$I" >/dev/null
"$L" --store "$S" mount demo:1 "$M" 2>"$M.err"
cat "$M.err"
echo ---
grep " $M " /proc/self/mounts
echo ---
cd "$M"
stat -c '%n %u:%g' etc/hostname home/user home/user/notes.txt nobody bin/sh
cd /
echo ---
"$L" --store "$S" inspect demo:1
"$L" --store "$S" umount "$M"
`, "L="+binPath, "S="+store, "I="+layout, "M="+mnt)
			parts := strings.Split(out, "---\n")
			if len(parts) != 5 {
				t.Fatalf("unexpected output:\n%s", out)
			}
			uidMap, mountMsg, mountLine, stats, inspect := parts[0], parts[1], parts[2], parts[3], parts[4]
			if !strings.Contains(mountMsg, "kernel overlay driver") {
				t.Errorf("auto did not pick the kernel in %s: %s", ns.name, mountMsg)
			}
			if f := strings.Fields(mountLine); len(f) < 4 || f[2] != "overlay" || !strings.Contains(f[3], "userxattr") {
				t.Errorf("%s: mounted %q, want kernel overlayfs with userxattr", ns.name, mountLine)
			}
			// In the namespace the kernel shows what is on disk: the
			// image's owners where the namespace maps them; the rest
			// belong to the namespace's root (the user).
			want := map[string]string{"etc/hostname": "0:0", "home/user": "1000:1000", "home/user/notes.txt": "1000:1000", "nobody": "65534:65534", "bin/sh": "0:0"}
			if !ns.full {
				want["home/user"], want["home/user/notes.txt"] = "0:0", "0:0"
				want["nobody"] = "0:0"
			}
			for _, line := range strings.Split(strings.TrimSpace(stats), "\n") {
				name, owner, _ := strings.Cut(line, " ")
				if w := want[name]; owner != w {
					t.Errorf("%s: kernel view shows %s as %s, want %s", ns.name, name, owner, w)
				}
			}
			// Outside, on disk: the host ids the namespace's map gives.
			var img struct {
				Layers []string `json:"layers"`
			}
			must(t, json.Unmarshal([]byte(inspect), &img))
			base := filepath.Join(store, "layers", strings.TrimPrefix(img.Layers[0], "sha256:"), "diff")
			// (home/user is 0700: outside, its owner's xattrs and
			// contents are closed to this user, as they should be.)
			for _, tc := range []struct {
				name   string
				viewID uint32
				record bool
			}{{"home/user", 1000, !ns.full}, {"nobody", 65534, true}, {"etc/shadow", 0, true}} {
				name, viewID := tc.name, tc.viewID
				p := filepath.Join(base, name)
				var st unix.Stat_t
				if err := unix.Lstat(p, &st); err != nil {
					t.Errorf("%s on disk: %v", name, err)
					continue
				}
				host, mapped := hostID(uidMap, viewID)
				if !mapped {
					host = uint32(os.Getuid())
				}
				if st.Uid != host {
					t.Errorf("%s: %s is owned by host uid %d on disk, want %d (namespace id %d)", ns.name, name, st.Uid, host, viewID)
				}
				if tc.record {
					if ov, ok, err := statoverride.Get(p); err != nil || !ok || ov.UID != viewID {
						t.Errorf("%s: record %+v %v %v, want uid %d", name, ov, ok, err, viewID)
					}
				}
			}
		})
	}
}

// hostID maps id through a /proc/PID/uid_map text.
func hostID(uidMap string, id uint32) (uint32, bool) {
	for _, line := range strings.Split(strings.TrimSpace(uidMap), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		in, _ := strconv.ParseUint(f[0], 10, 32)
		out, _ := strconv.ParseUint(f[1], 10, 32)
		n, _ := strconv.ParseUint(f[2], 10, 32)
		if uint64(id) >= in && uint64(id) < in+n {
			return uint32(out + uint64(id) - in), true
		}
	}
	return 0, false
}
