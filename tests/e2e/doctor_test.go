package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
)

// doctorReport is the part of `layerfs doctor --json` the tests check.
type doctorReport struct {
	Driver       string `json:"driver"`
	FuseMount    string `json:"fuseMount"`
	DriverReason string `json:"driverReason"`
	Checks       []struct {
		Status, Topic, Text string
	} `json:"checks"`
	Facts struct {
		EUID             int  `json:"euid"`
		InitialNamespace bool `json:"initialNamespace"`
		Kernel           struct {
			OverlayUserxattr bool `json:"overlayUserxattr"`
			OverlayOK        bool `json:"overlayOK"`
		} `json:"kernel"`
	} `json:"facts"`
}

func (r doctorReport) status(topic string) []string {
	var out []string
	for _, c := range r.Checks {
		if c.Topic == topic {
			out = append(out, c.Status)
		}
	}
	return out
}

// doctor runs `layerfs doctor` (text and --json) through wrap (a command
// prefix such as unshare) with cred, on a store under dir.
func doctor(t *testing.T, dir string, cred *syscall.Credential, wrap ...string) (text string, r doctorReport) {
	t.Helper()
	run := func(extra ...string) string {
		args := append(append(append([]string{}, wrap...), binPath, "--store", filepath.Join(dir, "store"), "doctor"), extra...)
		cmd := exec.Command(args[0], args[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Env = append(os.Environ(), "LAYERFS_STORE=", "HOME="+dir)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if err != nil && !strings.Contains(errb.String(), "no driver can mount") {
			t.Fatalf("%v: %v\n%s%s", args, err, out.String(), errb.String())
		}
		return out.String()
	}
	text = run()
	must(t, json.Unmarshal([]byte(run("--json")), &r))
	if _, err := os.Stat(filepath.Join(dir, "store")); err == nil {
		t.Fatal("doctor created the store")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("doctor left %v behind in %s", ents, dir)
	}
	return text, r
}

func TestDoctorAsThisUser(t *testing.T) {
	testutil.NeedRootOrRootlessPass(t)
	text, r := doctor(t, t.TempDir(), nil)
	if os.Geteuid() == 0 {
		if r.Driver != "kernel" || !r.Facts.InitialNamespace || r.Facts.Kernel.OverlayUserxattr {
			t.Fatalf("root: driver %q (%s), want kernel without userxattr\n%s", r.Driver, r.DriverReason, text)
		}
		if !strings.Contains(text, "mount --driver auto will use: kernel because") {
			t.Fatalf("root: verdict missing:\n%s", text)
		}
		if st := r.status("passthrough"); len(st) != 1 || st[0] != "OK" {
			t.Fatalf("root on Linux >= 6.9 can use passthrough, doctor says %v\n%s", st, text)
		}
		return
	}
	if r.Driver != "fuse" || r.FuseMount != "fusermount3" || r.Facts.Kernel.OverlayOK {
		t.Fatalf("plain user: driver %q via %q (%s), want fuse via fusermount3\n%s", r.Driver, r.FuseMount, r.DriverReason, text)
	}
	for _, want := range []string{"mount --driver auto will use: fuse because a plain user cannot mount overlayfs", "fusermount3 is setuid root", "unshare -Urm", "nosuid,nodev"} {
		if !strings.Contains(text, want) {
			t.Fatalf("plain user: doctor output lacks %q:\n%s", want, text)
		}
	}
}

func TestDoctorInUserNamespace(t *testing.T) {
	testutil.NeedRootOrRootlessPass(t)
	testutil.NeedTool(t, "unshare")
	out, err := exec.Command("unshare", "-Urm", "true").CombinedOutput()
	testutil.Need(t, err == nil, "unprivileged user namespaces are disabled: "+string(out))
	text, r := doctor(t, t.TempDir(), nil, "unshare", "-Urm")
	if r.Facts.InitialNamespace || r.Facts.EUID != 0 {
		t.Fatalf("unshare -Urm: doctor thinks it runs as euid %d in the initial namespace %v", r.Facts.EUID, r.Facts.InitialNamespace)
	}
	if r.Driver != "kernel" || !r.Facts.Kernel.OverlayUserxattr {
		t.Fatalf("unshare -Urm: driver %q (%s), want kernel with userxattr\n%s", r.Driver, r.DriverReason, text)
	}
	if !strings.Contains(text, "mount --driver auto will use: kernel because a trial overlay with userxattr mount") {
		t.Fatalf("unshare -Urm: verdict missing:\n%s", text)
	}
	if st := r.status("identity"); len(st) != 1 || st[0] != "WARN" {
		t.Fatalf("one mapped id should be a warning, doctor says %v\n%s", st, text)
	}
}

// TestDoctorAsNobody lets the root pass see the plain-user verdict too:
// fuse through fusermount3 where /dev/fuse is open to all, else a failure
// naming /dev/fuse.
func TestDoctorAsNobody(t *testing.T) {
	testutil.NeedRootOnly(t, "switches to uid 65534 (the rootless pass is TestDoctorAsThisUser)")
	dir, err := os.MkdirTemp("", "layerfs-doctor-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o777))
	text, r := doctor(t, dir, &syscall.Credential{Uid: 65534, Gid: 65534})
	st, err := os.Stat("/dev/fuse")
	must(t, err)
	if st.Mode().Perm()&0o006 == 0o006 {
		if r.Driver != "fuse" || r.FuseMount != "fusermount3" {
			t.Fatalf("nobody: driver %q via %q (%s), want fuse via fusermount3\n%s", r.Driver, r.FuseMount, r.DriverReason, text)
		}
	} else if r.Driver != "" || !strings.Contains(text, "/dev/fuse cannot be opened") || !strings.Contains(text, "chmod 0666 /dev/fuse") {
		t.Fatalf("nobody with /dev/fuse %v: want no driver and a /dev/fuse hint\n%s", st.Mode(), text)
	}
}
