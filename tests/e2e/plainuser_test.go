package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/internal/imagegen"
	"github.com/layerfs/layerfs/internal/testutil"
)

// nobody is the plain user the root pass switches to.
const nobody = 65534

// plainUser runs programs as a user without privileges: the test process
// itself in the rootless pass, uid and gid 65534 in the root pass, so the
// same test proves the same thing in both.
type plainUser struct {
	t    *testing.T
	cred *syscall.Credential // nil: as this process
	home string              // a directory the user owns
}

func newPlainUser(t *testing.T) *plainUser {
	t.Helper()
	testutil.NeedRootOrRootlessPass(t)
	u := &plainUser{t: t, home: t.TempDir()}
	if os.Geteuid() == 0 {
		// t.TempDir's parent is 0700.
		must(t, os.Chmod(filepath.Dir(u.home), 0o755))
		must(t, os.Chown(u.home, nobody, nobody))
		u.cred = &syscall.Credential{Uid: nobody, Gid: nobody}
	}
	return u
}

// dir makes a directory of the user's under their home.
func (u *plainUser) dir(name string) string {
	u.t.Helper()
	p := filepath.Join(u.home, name)
	must(u.t, os.MkdirAll(p, 0o755))
	if u.cred != nil {
		must(u.t, os.Chown(p, nobody, nobody))
	}
	return p
}

func (u *plainUser) uid() int {
	if u.cred != nil {
		return int(u.cred.Uid)
	}
	return os.Geteuid()
}

func (u *plainUser) gid() int {
	if u.cred != nil {
		return int(u.cred.Gid)
	}
	return os.Getegid()
}

// command prepares name args as the user, in their home, with a login's
// variables pointing there.
func (u *plainUser) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.cred}
	cmd.Env = append(os.Environ(), "HOME="+u.home, "LAYERFS_STORE=", "XDG_DATA_HOME="+filepath.Join(u.home, ".local/share"))
	cmd.Dir = u.home
	return cmd
}

func (u *plainUser) run(name string, args ...string) result {
	u.t.Helper()
	cmd := u.command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return result{out.String(), errb.String(), err}
}

// sh runs a shell script as the user; it fails the test unless the script
// succeeds.
func (u *plainUser) sh(script string, env ...string) string {
	u.t.Helper()
	cmd := u.command("sh", "-ec", script)
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		u.t.Fatalf("as uid %d: sh -ec %q: %v\nstdout: %s\nstderr: %s", u.uid(), script, err, out.String(), errb.String())
	}
	return out.String()
}

// layerfs runs layerfs with the store as the user and fails the test
// unless it succeeds.
func (u *plainUser) layerfs(store string, args ...string) result {
	u.t.Helper()
	r := u.run(binPath, append([]string{"--store", store}, args...)...)
	if r.err != nil {
		u.t.Fatalf("as uid %d: layerfs %s: %v\nstdout: %s\nstderr: %s", u.uid(), strings.Join(args, " "), r.err, r.stdout, r.stderr)
	}
	return r
}

// mount mounts ref at a new mount point of the user's with layerfs mount
// (extra flags first) and unmounts it when the test ends.
func (u *plainUser) mount(store, ref, name string, extra ...string) string {
	u.t.Helper()
	mnt := u.dir(name)
	unmountOnCleanup(u.t, mnt)
	u.t.Cleanup(func() {
		if isMounted(mnt) {
			u.run(binPath, "--store", store, "umount", mnt)
		}
	})
	u.layerfs(store, append(append([]string{"mount"}, extra...), ref, mnt)...)
	if !isMounted(mnt) {
		u.t.Fatalf("mount returned before %s was mounted", mnt)
	}
	return mnt
}

// sampleLayout writes the generated three-layer sample image as an OCI
// layout the user can read, tagged v1.
func (u *plainUser) sampleLayout() string {
	u.t.Helper()
	dir := filepath.Join(u.home, "image")
	writeSampleLayout(u.t, dir)
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

// mountOptions returns the per-mount and the per-superblock options of
// mnt from /proc/self/mountinfo.
func mountOptions(t *testing.T, mnt string) (mountOpts, superOpts []string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	must(t, err)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 6 && f[4] == mnt {
			return strings.Split(f[5], ","), strings.Split(f[len(f)-1], ",")
		}
	}
	t.Fatalf("%s is not in /proc/self/mountinfo", mnt)
	return nil, nil
}

// writeSampleLayout writes the generated three-layer sample image (owners
// 0, 1000 and 65534, setuid, sticky, hardlinks, a whiteout, an opaque dir,
// a file capability) as an OCI layout at dir, tagged v1.
func writeSampleLayout(t *testing.T, dir string) {
	t.Helper()
	layers, err := imagegen.SampleLayers()
	must(t, err)
	_, err = imagegen.WriteOCILayout(dir, layers, compression.Gzip, "v1")
	must(t, err)
}
