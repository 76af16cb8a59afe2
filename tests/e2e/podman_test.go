package e2e

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testutil"
)

// TestPodmanWithLayerfsOverlay is a rootless container runtime on
// layerfs: podman as a plain user, with containers-storage.conf naming
// layerfs-overlay as the overlay driver's mount_program, imports a rootfs
// tar (busybox) and runs commands in it, as the image's root and as
// another user of the container. No network is needed.
func TestPodmanWithLayerfsOverlay(t *testing.T) {
	testutil.NeedRootlessPass(t, "podman as a plain user (rootless podman)")
	podman := testutil.NeedTool(t, "podman")
	testutil.NeedTool(t, "crun")
	nsSubRange.need(t) // podman's user namespace takes the subordinate range
	busybox := staticBusybox(t)

	// Short paths: conmon's exit and attach files under a long runroot
	// make every `podman run` wait 20s for a timeout.
	home, err := os.MkdirTemp("/tmp", "lfp")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(home) })
	cfg, run := filepath.Join(home, ".config"), filepath.Join(home, "run")
	graph := filepath.Join(home, "storage")
	must(t, os.MkdirAll(filepath.Join(cfg, "containers"), 0o755))
	must(t, os.Mkdir(run, 0o700))
	must(t, os.WriteFile(filepath.Join(cfg, "containers/storage.conf"), []byte(`[storage]
driver = "overlay"
graphroot = "`+graph+`"
runroot = "`+filepath.Join(run, "storage")+`"

[storage.options.overlay]
mount_program = "`+overlayBinary()+`"
`), 0o644))
	// cgroupfs and a file event log: no systemd session here. No
	// cgroups: rootless podman cannot use cgroup v1 anyway.
	must(t, os.WriteFile(filepath.Join(cfg, "containers/containers.conf"), []byte(`[containers]
cgroups = "disabled"
netns = "none"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
`), 0o644))
	env := append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+cfg, "XDG_RUNTIME_DIR="+run,
		"XDG_DATA_HOME="+filepath.Join(home, ".local/share"))
	pm := func(args ...string) (string, string, error) {
		cmd := exec.Command(podman, args...)
		cmd.Env = env
		cmd.Dir = home
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		start := time.Now()
		err := cmd.Run()
		t.Logf("podman %s: %v", args[0], time.Since(start).Round(time.Millisecond))
		return out.String(), errb.String(), err
	}
	t.Cleanup(func() {
		// The storage holds files of the subordinate ids: remove it
		// from inside podman's namespace, then end the pause process
		// that keeps the namespace (started by this test's podman).
		pm("unshare", "rm", "-rf", graph)
		if data, err := os.ReadFile(filepath.Join(run, "libpod/tmp/pause.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})

	rootfs := filepath.Join(home, "rootfs.tar")
	must(t, os.WriteFile(rootfs, busyboxRootfs(t, busybox), 0o644))
	out, errs, err := pm("import", rootfs, "layerfs-e2e:1")
	if err != nil {
		t.Fatalf("podman import: %v\n%s%s", err, out, errs)
	}
	out, errs, err = pm("info", "--format", "{{.Store.GraphDriverName}} {{.Store.GraphOptions}}")
	if err != nil || !strings.HasPrefix(out, "overlay ") || !strings.Contains(out, overlayBinary()) {
		t.Fatalf("podman info: storage is not overlay with layerfs-overlay as mount_program: %v\n%s%s", err, out, errs)
	}
	out, errs, err = pm("run", "--rm", "layerfs-e2e:1", "sh", "-c",
		`grep ' / ' /proc/self/mounts; id -u; echo written > /tmp/f; cat /tmp/f; ls /bin | wc -l`)
	if strings.Contains(errs, "cgroups in hybrid mode not supported") {
		testutil.Need(t, false, "crun refuses this machine's hybrid cgroup layout while the cgroup2 hierarchy holds controllers; "+
			"scripts/test-rootless.sh binds them to cgroup v1 hierarchies first: "+errs)
	}
	if err != nil {
		t.Fatalf("podman run: %v\n%s%s", err, out, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], " / fuse.layerfs ") || lines[1] != "0" || lines[2] != "written" || lines[3] != "8" {
		t.Fatalf("podman run: want the container's / on layerfs (fuse.layerfs), uid 0, the write read back; got:\n%s%s", out, errs)
	}
	// Another user of the container reaches its root filesystem (the
	// mount program lets the namespace's other users in, as
	// fuse-overlayfs does) and is held to its modes.
	out, errs, err = pm("run", "--rm", "--user", "1000:1000", "layerfs-e2e:1", "sh", "-c",
		`id -u; cat /etc/motd; echo x > /etc/motd 2>/dev/null && echo wrote-root-file || echo refused`)
	if err != nil || out != "1000\nhello from layerfs\nrefused\n" {
		t.Fatalf("podman run --user 1000: %v\nstdout: %q\nstderr: %s", err, out, errs)
	}
}

// staticBusybox finds a statically linked busybox (Debian's busybox-static)
// to be a container's whole userland.
func staticBusybox(t *testing.T) string {
	t.Helper()
	p := testutil.NeedTool(t, "busybox")
	f, err := elf.Open(p)
	must(t, err)
	defer f.Close()
	for _, prog := range f.Progs {
		testutil.Need(t, prog.Type != elf.PT_INTERP, p+" is dynamically linked: install busybox-static")
	}
	return p
}

// busyboxRootfs is a container root filesystem as a tar: busybox, links
// for the applets the test runs, /etc/motd (root's, 0644) and /tmp.
func busyboxRootfs(t *testing.T, busybox string) []byte {
	t.Helper()
	bin, err := os.ReadFile(busybox)
	must(t, err)
	mt := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	motd := "hello from layerfs\n"
	hdrs := []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))},
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(motd))},
		{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777},
	}
	for _, applet := range []string{"sh", "id", "cat", "echo", "grep", "ls", "wc"} {
		hdrs = append(hdrs, &tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	for _, h := range hdrs {
		h.ModTime = mt
		must(t, tw.WriteHeader(h))
		switch h.Name {
		case "bin/busybox":
			_, err = tw.Write(bin)
		case "etc/motd":
			_, err = tw.Write([]byte(motd))
		}
		must(t, err)
	}
	must(t, tw.Close())
	return buf.Bytes()
}
